"""Methods from outside the package reach the command line: an installed plug-in (entry point) and ``--import MODULE``."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

METHOD = textwrap.dedent(
    '''
    import torch
    import lens_digits as ld


    @ld.register_method
    class {cls}(ld.Decoder):
        """Right at every layer from layer {first} on: a method whose grid a test can predict."""

        name = "{name}"
        targets = ("first", "answer")

        def score(self, data, target):
            correct = torch.zeros(len(data), data.n_columns, dtype=torch.bool)
            correct[:, {first}:] = True
            return ld.Scores(correct)
    '''
)


def cli(*args: str, path: list[Path] = (), cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in path), env.get("PYTHONPATH", "")])
    code = "import sys; from lens_digits.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A tiny plug-in package built and installed by pip (into a folder of its own, put on the path of the commands)."""
    src = tmp_path_factory.mktemp("plugin_src")
    (src / "ld_plugin_demo").mkdir()
    (src / "ld_plugin_demo" / "__init__.py").write_text(METHOD.format(cls="FromLayerTwo", name="plugin_from_layer_2", first=2))
    (src / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "ld-plugin-demo"
            version = "0.1"

            [project.entry-points."lens_digits.methods"]
            demo = "ld_plugin_demo"

            [tool.setuptools]
            packages = ["ld_plugin_demo"]
            """
        )
    )
    site = tmp_path_factory.mktemp("plugin_site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), str(src)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert list(site.glob("ld_plugin_demo-0.1.dist-info/entry_points.txt"))
    return site


RUN = ["run", "--model", "builtin:arith-llama", "--scales", "1-2", "--n", "10", "--target", "first", "--no-progress"]


def _rows(out: Path, method: str) -> pd.DataFrame:
    table = pd.read_csv(out / "grid.csv", dtype=str)
    table = table[table["method"] == method]
    for column in ("place", "carries"):
        if column in table.columns:
            table = table[table[column] == "all"]
    return table.assign(layer=table["layer"].astype(int), accuracy=table["accuracy"].astype(float))


def test_an_installed_plugin_runs_from_run_fit_and_study(installed, tmp_path):
    out = tmp_path / "run"
    done = cli(*RUN, "--methods", "logit_lens,plugin_from_layer_2", "--out", str(out), path=[installed])
    assert done.returncode == 0, done.stderr
    rows = _rows(out, "plugin_from_layer_2")
    assert set(rows.loc[rows["layer"] < 2, "accuracy"]) == {0.0} and set(rows.loc[rows["layer"] >= 2, "accuracy"]) == {1.0}
    assert "plugin_from_layer_2" in json.loads((out / "run.json").read_text())["methods"]

    lens_only = tmp_path / "lens_only"
    assert cli(*RUN, "--out", str(lens_only), path=[installed]).returncode == 0
    done = cli("fit", str(lens_only), "--methods", "plugin_from_layer_2", "--no-progress", path=[installed])
    assert done.returncode == 0, done.stderr
    pd.testing.assert_frame_equal(
        _rows(lens_only, "plugin_from_layer_2").reset_index(drop=True),
        rows.reset_index(drop=True)[_rows(lens_only, "plugin_from_layer_2").columns],
    )

    study = tmp_path / "study.toml"
    study.write_text(
        'methods = ["plugin_from_layer_2"]\ntarget = "first"\nn = 10\nscales = "1"\n[[models]]\nname = "b"\nmodel = "builtin:arith-llama"\n'
    )
    done = cli("study", str(study), "--out", str(tmp_path / "study"), "--no-progress", path=[installed])
    assert done.returncode == 0, done.stderr
    assert set(pd.read_csv(tmp_path / "study" / "study.csv")["method"]) == {"plugin_from_layer_2"}

    without = cli(*RUN, "--methods", "plugin_from_layer_2", "--out", str(tmp_path / "not_installed"))
    assert without.returncode == 2 and "unknown method 'plugin_from_layer_2'" in without.stderr
    assert not (tmp_path / "not_installed").exists()


def test_import_module_makes_a_method_of_ones_own_available(tmp_path):
    (tmp_path / "my_methods.py").write_text(METHOD.format(cls="FromLayerOne", name="mine_from_layer_1", first=1))
    out = tmp_path / "run"
    done = cli(*RUN, "--methods", "mine_from_layer_1", "--import", "my_methods", "--out", str(out), path=[tmp_path])
    assert done.returncode == 0, done.stderr
    rows = _rows(out, "mine_from_layer_1")
    assert set(rows.loc[rows["layer"] == 0, "accuracy"]) == {0.0} and set(rows.loc[rows["layer"] >= 1, "accuracy"]) == {1.0}
    missing = cli(*RUN, "--methods", "logit_lens", "--import", "no_such_module", "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "cannot import module 'no_such_module'" in missing.stderr
    study = tmp_path / "study.toml"
    study.write_text(
        'imports = ["my_methods"]\nmethods = ["mine_from_layer_1"]\ntarget = "first"\nn = 10\nscales = "1"\n'
        '[[models]]\nname = "b"\nmodel = "builtin:arith-llama"\n'
    )
    done = cli("study", str(study), "--out", str(tmp_path / "study"), "--no-progress", path=[tmp_path])
    assert done.returncode == 0, done.stderr
