"""Non-finite models, decoders and cached residuals are named, never scored (the grid would read 0.00 everywhere)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import lens_digits as ld
from lens_digits.cli import main as cli
from lens_digits.errors import NonFiniteError
from lens_digits.model.finite import count_nonfinite, nonfinite_parameters
from lens_digits.testing import save_checkpoint


def _damaged_checkpoint(folder, char_tok, key, value=float("nan"), index=(0, 0)):
    """A llama checkpoint whose weight ``key`` holds ``value`` at ``index``."""
    save_checkpoint(folder, "llama", char_tok, n_layers=3)
    weights = load_file(str(folder / "model.safetensors"))
    weights[key][index] = value
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_count_and_name_nonfinite_parameters():
    t = torch.zeros(5, 7)
    t[1, 2], t[3, 3] = math.nan, math.inf
    assert count_nonfinite(t) == 2
    named = [("a", torch.ones(3)), ("b", t), ("c", torch.full((2,), -math.inf))]
    assert nonfinite_parameters(named) == ["b (2 of 35 values)", "c (2 of 2 values)"]
    assert nonfinite_parameters(named, limit=1) == ["b (2 of 35 values)"]


@pytest.mark.parametrize(
    ("key", "column", "named"),
    [
        ("model.layers.1.mlp.down_proj.weight", 2, r"model\.layers\.1\.mlp\.down_proj\.weight \(2,048 of 2,048"),  # column 2 follows it
        ("model.embed_tokens.weight", 0, r"model\.embed_tokens\.weight"),  # the embedding: from column 0 on
    ],
)
def test_a_model_with_nan_weights_stops_naming_the_layer_and_parameter(tmp_path, char_tok, key, column, named):
    folder = _damaged_checkpoint(tmp_path / "nan", char_tok, key, index=(slice(None), slice(None)))
    model = ld.load_model(folder, device="cpu")
    with pytest.raises(NonFiniteError, match=rf"layer column {column} .*weights themselves are not finite: .*{named}"):
        ld.run_sweep(model, scales=[1, 2], n_per_scale=10, target="answer")


def test_the_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, char_tok, capsys):
    folder = _damaged_checkpoint(tmp_path / "inf", char_tok, "model.layers.0.mlp.up_proj.weight", float("inf"), (slice(None), 0))
    out = tmp_path / "runs" / "demo"
    capsys.readouterr()
    args = ["run", "--model", str(folder), "--scales", "1-2", "--n", "10", "--methods", "logit_lens,probe", "--no-progress"]
    code = cli([*args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "not finite" in err and "up_proj" in err
    assert not (tmp_path / "runs").exists()  # no run directory, no cache, no lock, no folder made for it


def test_nan_in_the_readout_alone_is_named_by_the_lens(tmp_path, char_tok):
    # Finite residuals, non-finite final norm: the residual check passes, the lens's logits are named.
    folder = _damaged_checkpoint(tmp_path / "norm", char_tok, "model.norm.weight", index=(slice(None),))
    model = ld.load_model(folder, device="cpu")
    with pytest.raises(NonFiniteError, match=r"logit_lens's logits are not finite .*layer column 0.*ln_final"):
        ld.run_sweep(model, scales=[1], n_per_scale=10, target="first")


def test_greedy_answers_of_a_nan_model_are_an_error_not_null(tmp_path, char_tok):
    from lens_digits.model.greedy import greedy_answers

    folder = _damaged_checkpoint(tmp_path / "head", char_tok, "lm_head.weight", index=(slice(None), slice(None)))
    model = ld.load_model(folder, device="cpu")
    with pytest.raises(NonFiniteError, match="logits are not finite .*greedily.*lm_head"):
        greedy_answers(model, [[1, 5, 6]], [3])


def test_a_tuned_lens_with_nan_translators_is_refused_at_load(tmp_path, native_model):
    lens = ld.TunedLens.from_model(native_model, steps=2)
    n, d = native_model.cfg.n_layers, native_model.cfg.d_model
    lens.W, lens.b = torch.zeros(n, d, d), torch.zeros(n, d)
    lens.W[1, 0, 0] = math.nan
    lens.save(tmp_path / "lens")
    with pytest.raises(NonFiniteError, match="translator weights holds 1 NaN"):
        ld.TunedLens.load(tmp_path / "lens", native_model)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: save_file({"W": torch.zeros(3, 32, 32), "b": torch.zeros(3, 5)}, str(f / "tuned_lens.safetensors")), "biases of shape"),
        (lambda f: save_file({"W": torch.zeros(3, 32, 32)}, str(f / "tuned_lens.safetensors")), r"lacks tensor\(s\) \['b'\]"),
        (lambda f: (f / "tuned_lens.safetensors").write_bytes(b"\x00garbage"), "cannot be read"),
        (lambda f: (f / "tuned_lens.json").write_text("{not json"), "cannot be read"),
        (lambda f: (f / "tuned_lens.json").write_text("[1, 2]"), "holds format"),
    ],
)
def test_damaged_tuned_lens_files_are_one_clear_error(tmp_path, native_model, damage, message):
    lens = ld.TunedLens.from_model(native_model)
    n, d = native_model.cfg.n_layers, native_model.cfg.d_model
    lens.W, lens.b = torch.zeros(n, d, d), torch.zeros(n, d)
    folder = lens.save(tmp_path / "lens")
    damage(folder)
    with pytest.raises(ld.LensDigitsError, match=message):
        ld.TunedLens.load(folder, native_model)


def test_a_tuned_lens_library_folder_with_a_missing_translator_is_one_error(tmp_path, native_model):
    d = native_model.cfg.d_model
    torch.save({"0.weight": torch.zeros(d, d), "0.bias": torch.zeros(d)}, tmp_path / "params.pt")
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": native_model.cfg.n_layers}))
    with pytest.raises(ld.LensDigitsError, match="cannot be read .*1.weight"):
        ld.TunedLens.load(tmp_path, native_model)


def test_a_diverging_tuned_lens_is_named(native_model):
    lens = ld.TunedLens.from_model(native_model, steps=10, lr=1e37)
    grid_problems = ld.generate_problems(ld.TaskConfig(scales=[1], n_per_scale=5, n_train=20, n_val=5))
    from lens_digits.residuals.collect import collect_residuals

    data = collect_residuals(native_model, grid_problems, teacher_forcing=False)
    with pytest.raises(NonFiniteError, match="training the tuned lens diverged.*lower its learning rate"):
        lens.fit(data.split("train"), data.split("val"))


def test_a_saved_probe_with_nan_weights_is_refused(tmp_path, native_model):
    grid = ld.run_sweep(native_model, scales=[1], n_per_scale=20, methods=["probe"], target="first", n_train=40, n_val=10)
    assert len(grid.table)
    probe = ld.LinearProbe(seed=0)
    from lens_digits.residuals.collect import collect_residuals

    data = collect_residuals(native_model, ld.generate_problems(ld.TaskConfig(scales=[1], n_per_scale=20)), teacher_forcing=False)
    probe.fit(data.split("train"), data.split("val"))
    folder = probe.save(tmp_path / "probe")
    tensors = load_file(str(folder / "probe.safetensors"))
    tensors["W"][0, 1, 0, 0, 3] = math.inf
    save_file(tensors, str(folder / "probe.safetensors"))
    with pytest.raises(NonFiniteError, match="tensor 'W' holds 1 NaN or infinite"):
        ld.LinearProbe.load(folder)
    (folder / "probe.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ld.LensDigitsError, match="cannot be read"):
        ld.LinearProbe.load(folder)


def _poison_shard(cache_folder, pattern):
    """Write a NaN into the first shard matching ``pattern`` and update its checksum, as a tool editing the file would."""
    import hashlib

    from safetensors.torch import load, save

    meta_path = sorted(cache_folder.glob(pattern + ".json"))[0]
    data_path = meta_path.with_suffix(".safetensors")
    tensors = load(data_path.read_bytes())
    tensors["resid"][0, 1, 0, 0] = math.nan
    data = save(tensors)
    data_path.write_bytes(data)
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = hashlib.sha256(data).hexdigest()
    meta_path.write_text(json.dumps(meta))
    return meta_path.stem


def test_nan_in_a_cached_shard_is_named_at_fit_and_recomputed_by_run(tmp_path, llama_dir, capsys):
    out = tmp_path / "run"
    args = [
        "--model",
        str(llama_dir),
        "--scales",
        "1-2",
        "--n",
        "12",
        "--methods",
        "logit_lens,probe",
        "--target",
        "first",
        "--no-progress",
    ]
    assert cli(["run", *args, "--out", str(out)]) == 0
    before = (out / "grid.csv").read_text()
    name = _poison_shard(out / "cache", "*-train-scale2-*")
    capsys.readouterr()
    assert cli(["fit", str(out), "--methods", "probe", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and name in err and "NaN or infinite" in err
    assert (out / "grid.csv").read_text() == before  # nothing was scored from it
    assert cli(["run", *args, "--out", str(out), "--overwrite"]) == 0
    assert f"warning: residual shard {name} " in capsys.readouterr().err
    assert (out / "grid.csv").read_text() == before  # recomputed, the same grid
