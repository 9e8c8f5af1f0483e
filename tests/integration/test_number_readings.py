"""The helix probe and the Fourier reading on real models: patches against plain Hugging Face hooks, the DFT against
numpy.fft on the lens's own logits, invariants of the causal score, and the three tokenizer kinds."""

import json
import warnings

import numpy as np
import pytest
import torch
import transformers
from reference import blocks, final_norm

import lens_digits as ld
from lens_digits.methods import FourierFeatures, HelixProbe, LogitLens
from lens_digits.methods.interventions.helix import PATCHES, number_positions, patched_last_logits
from lens_digits.model.adapter import ModelAdapter
from lens_digits.problems.targets import encode_for_model
from lens_digits.problems.tasks import TaskConfig, generate_problems
from lens_digits.residuals.collect import collect_residuals, tokens_only
from lens_digits.results.number_figures import causal_lines, fit_quality_heatmap, spectrum_heatmap
from lens_digits.testing import bpe_tokenizer, char_tokenizer, save_checkpoint

SETTINGS = {
    "llama": (char_tokenizer, {"template": "compact"}),
    "gpt2": (bpe_tokenizer, {"template": "{a} {op} {b} =", "answer_prefix": " "}),
}


def hf_patched_log_probs(hf, ids, layer, position, new):
    """Next-token log-probabilities of ``ids`` with the input of block ``layer`` (the final norm's for the last column)
    at ``position`` replaced by ``new``, with transformers' own forward hooks; and the hidden state that was there."""
    module = [*blocks(hf), final_norm(hf)][layer]
    seen = {}

    def put(mod, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).clone()
        seen["h"] = hidden[0, position].clone()
        hidden[0, position] = new.to(hidden.dtype)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = module.register_forward_pre_hook(put, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1]
    finally:
        handle.remove()
    return torch.log_softmax(logits.double(), -1), seen["h"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_helix_patch_equals_plain_hugging_face_hooks(arch, tmp_path):
    make_tok, settings = SETTINGS[arch]
    folder = save_checkpoint(tmp_path / arch, arch, make_tok(), n_layers=2, d_model=32)
    adapter = ModelAdapter.wrap(ld.load_model(folder, device="cpu", progress=False))
    problems = generate_problems(TaskConfig(scales=[2], n_per_scale=6, n_train=30, n_val=0, seed=0, **settings))
    encoded = encode_for_model(adapter, problems)
    probe = HelixProbe(position="a", template=settings["template"], pca_size=8)
    train = [i for i, p in enumerate(problems) if p.split == "train"]
    split = tokens_only([problems[i] for i in train], [encoded[i] for i in train], adapter.n_layers + 1)
    probe.prepare(adapter, split, split.select([]))
    rows = [i for i, p in enumerate(problems) if p.split == "test"]
    test = tokens_only([problems[i] for i in rows], [encoded[i] for i in rows], 3)
    resid, where = probe.residuals(adapter, test)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    for i, p in enumerate(test.problems):
        ids = list(test.encoded[i].prompt_ids)
        tokens = [adapter.tokenizer.decode([t]) for t in ids]
        assert tokens[where[i]].strip() == str(p.a)[-len(tokens[where[i]].strip()) :]  # the operand's last token
        source = (i + 1) % len(test)
        for layer in range(adapter.n_layers + 1):
            new = probe.reconstruct("helix", 2, layer, torch.tensor([test.problems[source].a]), resid[[source], layer])
            ours = patched_last_logits(adapter, torch.tensor([ids]), layer, new.float(), torch.tensor([where[i]]))
            want, hidden = hf_patched_log_probs(hf, ids, layer, where[i], new.float()[0])
            torch.testing.assert_close(resid[i, layer], hidden.float(), atol=1e-4, rtol=1e-4)  # the same residual is read
            torch.testing.assert_close(torch.log_softmax(ours[0].double(), -1), want, atol=1e-4, rtol=1e-4)


class FullResidual(HelixProbe):
    """A helix probe whose "fit" is the source's own residual."""

    name = "helix_full_residual_test"

    def reconstruct(self, kind, scale, layer, number, resid):
        return resid.double() if kind == "helix" else super().reconstruct(kind, scale, layer, number, resid)


@pytest.fixture(scope="module")
def builtin():
    return ld.load_builtin_model("arith-llama")


@pytest.mark.slow
def test_the_full_residual_as_fit_scores_the_full_layer_patch_exactly(builtin):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        grid = ld.run_sweep(builtin, scales=[2], n_per_scale=24, methods=[FullResidual(position="answer", pairs=12)], target="first")
    df = grid.to_dataframe()
    df = df[df.get("carries", "all") == "all"]
    full = df[df.patched == "full layer"].set_index("layer")
    fit = df[df.patched == "helix"].set_index("layer")
    assert (full["n"] == 12).all()
    for column in ("accuracy", "logit_diff", "recovered"):
        pd_equal = np.array_equal(full[column].to_numpy(), fit[column].to_numpy(), equal_nan=True)
        assert pd_equal, column
    assert (full["recovered"].dropna() == 1).all()
    assert np.isnan(full.loc[0, "recovered"])  # column 0 at the last prompt position: the same token, nothing changes
    assert full.loc[builtin.cfg.n_layers, "accuracy"] == 1  # the final residual decides the next token alone


@pytest.mark.slow
def test_on_a_trained_model_the_helix_reads_the_operand_and_the_control_does_not(builtin, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        grid = ld.run_sweep(builtin, scales=[2], n_per_scale=30, methods=["helix_probe", "fourier"], target="first", pairs=10)
    main = grid.main()
    helix = main[main.method == "helix_probe"]
    assert helix["accuracy"].max() >= 0.5 and helix["r2"].max() > 0.5
    assert (helix["control"] <= 0.2).all() and (helix["control_r2"] < 0.2).all()
    rows = grid.to_dataframe()
    for method, column in (("helix_probe", "patched"), ("fourier", "period")):
        got = rows[(rows.method == method) & (rows.get("carries", "all") == "all")]
        assert set(got[column]) >= ({"all", *PATCHES} if method == "helix_probe" else {"all", "2", "2.5", "5", "10", "rest"})
    periods = rows[(rows.method == "fourier") & (rows.period != "all") & (rows.get("carries", "all") == "all")]
    sums = periods.groupby(["scale", "layer"])["energy"].sum()
    assert np.allclose(sums, 1, atol=1e-4)
    record = grid.record.methods
    assert record["helix_probe"]["position"] == "a" and record["helix_probe"]["periods"] == [2, 5, 10, 100]
    assert record["helix_probe"]["pca_size_used"]["2"] <= 100 and record["fourier"]["candidates"] == {"plain": 10}
    back = ld.AccuracyGrid.load(grid.save(tmp_path / "run"))
    assert set(back.to_dataframe()["method"]) == {"helix_probe", "fourier"}
    assert len(causal_lines(back).data) == len(PATCHES)  # one line per patch, one panel for the one scale
    spectrum = spectrum_heatmap(back)
    assert list(spectrum.data[0].y) == ["T=2", "T=2.5", "T=5", "T=10", "rest"] and spectrum.data[0].z.shape == (5, builtin.cfg.n_layers + 1)
    assert fit_quality_heatmap(back).data[0].z.shape[-1] == builtin.cfg.n_layers + 1
    helix_only = ld.AccuracyGrid(back.table[back.table.method == "helix_probe"], back.problems, back.info)
    assert "Flip" not in helix_only.figure().layout.title.text  # its main cells are decoding accuracies, not flip rates


def test_the_dft_equals_numpy_fft_on_the_lens_logits(native_model):
    problems = generate_problems(TaskConfig(scales=[1, 2], n_per_scale=6, n_train=0, n_val=0, seed=4))
    data = collect_residuals(native_model, problems)
    reading = FourierFeatures.from_model(native_model)
    shares, _ = reading.spectra(data, data.target_ids.shape[1])
    lens = LogitLens.from_model(native_model)
    ids = reading.candidates(False)
    for layer in range(data.n_columns):
        for pos in range(data.target_ids.shape[1]):
            real = (data.target_ids[:, pos] >= 0).nonzero()[:, 0]
            logits = lens.layer_logits(data.resid[real, layer, pos], layer)[:, ids].double().numpy()
            power = np.abs(np.fft.fft(logits, axis=-1)) ** 2
            total = power[:, 1:].sum(-1)
            # ten numbers: period 2 is k = 5, 2.5 is k = 4 and 6, 5 is k = 2 and 8, 10 is k = 1 and 9
            want = np.stack([power[:, [5]].sum(-1), power[:, [4, 6]].sum(-1), power[:, [2, 8]].sum(-1), power[:, [1, 9]].sum(-1)], 1)
            np.testing.assert_allclose(shares[real, layer, pos, :4].numpy(), want / total[:, None], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["digits", "chunks", "bpe"])
def test_the_readings_run_on_every_tokenizer_kind(kind, llama_model, llama_chunk_dir, gpt2_model):
    model = {"digits": llama_model, "chunks": None, "bpe": gpt2_model}[kind]
    if model is None:
        model = ld.load_model(llama_chunk_dir, device="cpu", progress=False)
    settings = SETTINGS["gpt2"][1] if kind == "bpe" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        grid = ld.run_sweep(
            model, scales=[1, 2], n_per_scale=8, n_train=12, methods=["helix_probe", "fourier"], target="both", pairs=4, **settings
        )
    df = grid.main()
    for method in ("helix_probe", "fourier"):
        got = df[df.method == method]
        assert set(got["target"]) == {"first", "answer"} and set(got["scale"]) == {1, 2}
    assert (df[df.method == "helix_probe"]["r2"] <= 1 + 1e-9).all()
    sizes = {"digits": 10, "chunks": 1000, "bpe": 100}
    assert max(grid.record.methods["fourier"]["candidates"].values()) >= sizes[kind]
    adapter = ModelAdapter.wrap(model)
    probs = [p for p in grid.problems if p.split == "test"][:4]
    encoded = encode_for_model(adapter, probs)
    for which in ("a", "b"):
        where = number_positions(adapter.tokenizer, probs, encoded, which, settings.get("template", "compact"))
        for p, e, w in zip(probs, encoded, where, strict=True):
            text = adapter.tokenizer.decode([e.prompt_ids[w]]).strip()
            assert text and str(getattr(p, which)).endswith(text)  # the last token of that operand


@pytest.mark.slow
def test_the_readme_example_runs_as_written():
    import re

    from conftest import REPO

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if "causal_lines(grid)" in b]
    space = {"model": ld.testing.tiny_model(), "ld": ld}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        exec(block.replace("n_per_scale=60", "n_per_scale=8"), space)  # noqa: S102 - the README's own code, on fewer problems
    assert set(space["grid"].methods) == {"helix_probe", "fourier"}
    assert space["grid"].record.methods["helix_probe"]["position"] == "answer"


@pytest.mark.slow
def test_fourier_refitted_from_the_cache_equals_the_run_and_the_helix_needs_the_model(tmp_path):
    import pandas as pd

    from lens_digits.cli import main
    from lens_digits.errors import LensDigitsError
    from lens_digits.runs.fit import refit

    out = tmp_path / "run"
    base = ["--model", "builtin:arith-llama", "--scales", "2", "--n", "12", "--target", "both", "--pairs", "4", "--no-progress"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["run", *base, "--methods", "helix_probe,fourier", "--out", str(out)]) == 0
        again = refit(out, ["fourier"], model=ld.load_builtin_model("arith-llama"), save=False)
    before = pd.read_csv(out / "grid.csv")
    before = before[before.method == "fourier"].reset_index(drop=True)
    after = again.to_dataframe()
    after = after[after.method == "fourier"].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        before[["target", "scale", "layer", "accuracy", "energy"]], after[["target", "scale", "layer", "accuracy", "energy"]]
    )
    assert json.loads((out / "run.json").read_text())["methods"]["helix_probe"]["token"] == "last token of operand a"
    with pytest.raises(LensDigitsError, match="runs the model"):
        refit(out, ["helix_probe"], save=False)
