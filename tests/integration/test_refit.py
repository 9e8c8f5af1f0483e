"""lens-digits fit: decoders fitted on a run's cached residuals equal those of a run that had them from the start."""

import json
import warnings

import pandas as pd
import pytest

from lens_digits.cli import main
from lens_digits.errors import LensDigitsError
from lens_digits.results.grid import AccuracyGrid
from lens_digits.runs.fit import refit
from lens_digits.storage.paths import is_run_directory, pending_cache

BASE = [
    "--model",
    "builtin:arith-llama",
    "--scales",
    "2-3",
    "--n",
    "12",
    "--target",
    "both",
    "--seed",
    "5",
    "--no-progress",
    "--shard-size",
    "8",
]


def cli(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return main(list(args))


def rows(folder, name, method):
    df = pd.read_csv(folder / name)
    return df[df["method"] == method].reset_index(drop=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("refit")
    assert cli("run", *BASE, "--methods", "logit_lens", "--cache-train", "--out", str(root / "lens")) == 0
    assert cli("run", *BASE, "--methods", "logit_lens,probe", "--out", str(root / "both")) == 0
    assert cli("run", *BASE, "--methods", "logit_lens", "--out", str(root / "lens_only")) == 0
    assert cli("run", *BASE, "--methods", "logit_lens,tuned_lens", "--out", str(root / "tuned")) == 0
    return root


def test_a_probe_fitted_later_equals_the_probe_of_a_run_that_had_it(runs, capsys):
    lens = runs / "lens"
    grid_before = rows(lens, "grid.csv", "logit_lens")
    assert cli("fit", str(lens), "--methods", "probe", "--no-progress") == 0
    assert "updated" in capsys.readouterr().out
    for name in ("grid.csv", "emergence.csv"):
        pd.testing.assert_frame_equal(rows(lens, name, "probe"), rows(runs / "both", name, "probe"))
    pd.testing.assert_frame_equal(rows(lens, "grid.csv", "logit_lens")[grid_before.columns], grid_before)  # the rest is untouched
    assert list(pd.read_csv(lens / "grid.csv").columns) == list(pd.read_csv(runs / "both" / "grid.csv").columns)
    info = json.loads((lens / "run.json").read_text())
    assert info["refits"][0]["methods"] == ["probe"] and "probe" in info["methods"] and "probe" in info["sweep"]["methods"]
    assert is_run_directory(lens) and (lens / "cache").is_dir() and not pending_cache(lens).exists()
    # fitting again replaces the probe's rows instead of adding more
    again = refit(lens, ["probe"], save=False)
    assert (again.table["method"] == "probe").sum() == (rows(runs / "both", "grid.csv", "probe").shape[0])
    AccuracyGrid.load(lens)  # every file still reads


def test_lenses_need_the_model_and_only_the_one_the_residuals_came_from(runs, builtin, llama_model):
    with pytest.raises(LensDigitsError, match="--model"):
        refit(runs / "lens_only", ["logit_lens"], save=False)
    again = refit(runs / "lens_only", ["logit_lens"], model=builtin, save=False)
    before = AccuracyGrid.load(runs / "lens_only").table
    pd.testing.assert_frame_equal(again.table.reset_index(drop=True), before.reset_index(drop=True))
    tuned = refit(runs / "lens_only", ["tuned_lens"], model=builtin, save=False)  # trained on the train problems, as in a sweep
    want = AccuracyGrid.load(runs / "tuned").table
    pd.testing.assert_frame_equal(
        tuned.table[tuned.table.method == "tuned_lens"].reset_index(drop=True), want[want.method == "tuned_lens"].reset_index(drop=True)
    )
    with pytest.raises(LensDigitsError, match="not the one the cached residuals came from"):
        refit(runs / "lens_only", ["logit_lens"], model=llama_model, save=False)


def test_what_fit_cannot_do_is_said_clearly(runs, tmp_path):
    with pytest.raises(LensDigitsError, match="no shard .*train.*cache-train"):
        refit(runs / "lens_only", ["probe"], save=False)
    with pytest.raises(LensDigitsError, match="runs the model"):
        refit(runs / "lens_only", ["patch"], save=False)
    with pytest.raises(LensDigitsError, match="unknown method"):
        refit(runs / "lens_only", ["probes"], save=False)
    bare = tmp_path / "bare"
    assert cli("run", *BASE, "--methods", "logit_lens", "--out", str(bare), "--no-cache") == 0
    with pytest.raises(LensDigitsError, match="no residual cache"):
        refit(bare, ["probe"], save=False)
    assert cli("fit", str(bare), "--methods", "probe") == 2
