"""Studies: a TOML file of models x tasks, one run directory per unit, a combined table, and Ray giving the same bytes."""

import json
import shutil
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from lens_digits.cli import main
from lens_digits.errors import LensDigitsError
from lens_digits.runs.study import load_study, run_study
from lens_digits.storage.paths import is_run_directory
from lens_digits.testing import char_tokenizer, save_checkpoint


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """A tiny local Llama checkpoint with the built-in model's character tokenizer."""
    return save_checkpoint(tmp_path_factory.mktemp("small") / "small", "llama", char_tokenizer(), n_layers=2, d_model=32)


def study_text(small: Path, **extra: str) -> str:
    lines = "\n".join(f"{k} = {v}" for k, v in extra.items())
    return textwrap.dedent(
        f"""
        methods = ["logit_lens"]
        target = "first"
        n = 10
        scales = "1-2"
        {lines}

        [[models]]
        name = "arith-llama"
        model = "builtin:arith-llama"

        [[models]]
        name = "small"
        model = "{small}"

        [[tasks]]
        name = "add"

        [[tasks]]
        name = "spaced"
        template = "spaced"
        """
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_a_study_runs_every_unit_into_its_own_run_directory_and_combines_them(small_dir, tmp_path, capsys):
    path = write(tmp_path, study_text(small_dir))
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--no-progress"]) == 0
    assert "4 units (2 models x 2 tasks)" in capsys.readouterr().out
    table = pd.read_csv(out / "study.csv")
    assert list(table.columns[:4]) == ["model", "task", "n_params", "n_layers"]
    for model, n_layers in (("arith-llama", 4), ("small", 2)):
        for task in ("add", "spaced"):
            unit = out / model / task
            assert is_run_directory(unit) and (unit / "cache").is_dir()
            rows = table[(table.model == model) & (table.task == task)].drop(columns=["model", "task", "n_params", "n_layers"])
            grid = pd.read_csv(unit / "grid.csv")
            pd.testing.assert_frame_equal(rows.reset_index(drop=True)[grid.columns], grid, check_dtype=False)
            assert set(table.loc[(table.model == model), "n_layers"]) == {n_layers}
    sizes = table.groupby("model")["n_params"].first()
    assert sizes["arith-llama"] > sizes["small"] > 0
    emergence = pd.read_csv(out / "study_emergence.csv")
    assert set(emergence["model"]) == {"arith-llama", "small"}
    html = (out / "study.html").read_text()
    assert "Accuracy Breakdown" in html and "Emergence against model size" in html
    record = json.loads((out / "study.json").read_text())
    assert record["status"] == "done" and len(record["ran"]) == 4

    # again: every unit is finished, nothing runs, the same bytes come out
    before = {p.name: p.read_bytes() for p in (out / "study.csv", out / "study_emergence.csv")}
    assert main(["study", str(path), "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "study.json").read_text())["ran"] == []
    assert {p.name: p.read_bytes() for p in (out / "study.csv", out / "study_emergence.csv")} == before

    # a changed task runs again for every model; the other task's units are kept
    path.write_text(study_text(small_dir).replace('template = "spaced"', 'template = "calculate"'))
    assert main(["study", str(path), "--out", str(out), "--no-progress"]) == 0
    assert sorted(json.loads((out / "study.json").read_text())["ran"]) == ["arith-llama/spaced", "small/spaced"]


def test_a_study_folder_that_is_not_ours_is_refused(small_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    study, _ = load_study(write(tmp_path, study_text(small_dir)))
    with pytest.raises(LensDigitsError, match="not empty and holds no study"):
        run_study(study, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("n = 10", "n = 10\nbogus = 1"), r"unknown setting\(s\) \['bogus'\]"),
        (lambda t: t.replace('name = "small"', 'name = "a/b"'), "names a folder"),
        (lambda t: t.replace('name = "small"', 'name = "arith-llama"'), "appear more than once"),
        (
            lambda t: t.replace('model = "builtin:arith-llama"', 'model = "builtin:arith-llama"\ncolour = "red"'),
            r"unknown key\(s\) \['colour'\]",
        ),
        (lambda t: t.replace('scales = "1-2"', 'scales = "0-2"'), "impossible digit scale"),
        (lambda t: t.replace("[[models]]", "[[modelz]]"), r"\[\[models\]\]"),
        (lambda t: t + "\n[[", "not valid TOML"),
        (lambda t: 'shard_size = "x"\n' + t, "shard_size must be an integer"),
        (lambda t: "cache = 3\n" + t, "cache must be true or false"),
    ],
)
def test_a_bad_study_file_is_named_before_anything_runs(small_dir, tmp_path, edit, message):
    path = write(tmp_path, edit(study_text(small_dir)))
    with pytest.raises(LensDigitsError, match=message):
        load_study(path)
    assert main(["study", str(path), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_same_study_through_a_local_ray_cluster_gives_the_same_bytes(small_dir, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))  # the cluster writes nothing there (no ~/.ray token)
    ray = pytest.importorskip("ray", reason="Ray is in the test extra: pip install -e '.[test]'")
    import psutil

    from lens_digits.runs.executors import local_ray_settings

    study, _ = load_study(write(tmp_path, study_text(small_dir)))
    run_study(study, tmp_path / "local")
    settings = local_ray_settings()
    ray.init(num_cpus=2, **settings)
    try:
        me = psutil.Process()
        ray_pids = {p.pid for p in me.children(recursive=True)} | {me.pid}
        run_study(study, tmp_path / "ray", executor="ray")
        ray_pids |= {p.pid for p in me.children(recursive=True)}
        mine = [c for c in psutil.net_connections(kind="inet") if c.pid in ray_pids]
        assert any(c.status == psutil.CONN_LISTEN for c in mine)
        for c in mine:  # every server listens on, and every connection goes to, the loopback address only
            assert c.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1"), c
            if c.raddr:
                assert c.raddr.ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1"), c
    finally:
        ray.shutdown()
        shutil.rmtree(settings["_temp_dir"], ignore_errors=True)
    assert not home.exists()
    assert json.loads((tmp_path / "ray" / "study.json").read_text())["executor"] == "ray"
    for name in ("study.csv", "study_emergence.csv"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    for unit in ("arith-llama/add", "arith-llama/spaced", "small/add", "small/spaced"):
        for name in ("grid.csv", "emergence.csv", "prompts.jsonl"):
            assert (tmp_path / "ray" / unit / name).read_bytes() == (tmp_path / "local" / unit / name).read_bytes(), (unit, name)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/nonexistent/checkpoint", "study model 'small': no checkpoint folder at '/nonexistent/checkpoint'"),
        ("someone/not-downloaded", "study model 'small': the hub is switched off .* 'someone/not-downloaded' is not in the local cache"),
    ],
)
def test_an_unreachable_model_stops_the_study_before_any_unit_runs(small_dir, tmp_path, monkeypatch, source, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write(tmp_path, study_text(small_dir).replace(f'model = "{small_dir}"', f'model = "{source}"'))
    study, _ = load_study(path)
    out = tmp_path / "out"
    with pytest.raises(LensDigitsError, match=message):
        run_study(study, out)
    assert not out.exists()  # the built-in model's units, listed first, did not run either


def test_prompts_a_model_cannot_take_stop_the_study_before_any_unit_runs(small_dir, tmp_path):
    text = study_text(small_dir).replace('template = "spaced"', 'template = "spaced"\nfew_shot = 40')  # longer than the context
    study, _ = load_study(write(tmp_path, text))
    with pytest.raises(LensDigitsError, match="study model 'arith-llama', task 'spaced'"):
        run_study(study, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_symlinked_unit_folder_is_refused_and_its_target_untouched(small_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"format": "lens_digits.study", "status": "done"}))  # a study of ours
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "small").symlink_to(elsewhere)
    study, _ = load_study(write(tmp_path, study_text(small_dir)))
    with pytest.raises(LensDigitsError, match="out/small' is a symbolic link"):
        run_study(study, out)
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in out.iterdir()) == ["small", "study.json"]


def test_a_failing_unit_marks_the_study_failed_and_the_finished_units_are_combined(small_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(small_dir, broken)
    weights = load_file(str(broken / "model.safetensors"))
    weights["model.layers.0.mlp.up_proj.weight"][:] = float("nan")
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    path = write(tmp_path, study_text(broken))
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 of 4 study units failed (small/add: the model's residual stream is not finite" in err[0]
    record = json.loads((out / "study.json").read_text())
    assert record["status"] == "failed"
    assert [f["unit"] for f in record["failed"]] == ["small/add", "small/spaced"]
    table = pd.read_csv(out / "study.csv")
    assert set(table["model"]) == {"arith-llama"}  # the finished units, combined
    assert not (out / "small" / "add").exists()


def test_the_readme_study_offline_stops_at_once_naming_the_hub_model(tmp_path):
    """The README's example study, on a machine without the hub: exit 2 before any unit runs, naming pythia-70m."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    toml = readme[readme.index("# study.toml") :].split("```")[0]
    assert 'model = "EleutherAI/pythia-70m"' in toml and 'model = "builtin"' in toml
    (tmp_path / "study.toml").write_text(toml.replace('out = "runs/study"', f'out = "{tmp_path / "study"}"'))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-cache")}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-m", "lens_digits.cli", "study", str(tmp_path / "study.toml"), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("lens-digits: error: ") and "'EleutherAI/pythia-70m'" in line and "pythia-70m" in line, line
    assert not (tmp_path / "study").exists()  # the built-in model's units, listed first, did not run
