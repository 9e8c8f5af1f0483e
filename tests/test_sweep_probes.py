"""Logit lens and probes in one sweep, on the same test problems."""

import pandas as pd
import pytest

import lens_digits as ld
from lens_digits.cli import main


@pytest.fixture(scope="module")
def both(llama_model):
    return ld.run_sweep(llama_model, scales=[1, 2], n_per_scale=60, methods=["logit_lens", "probe"], target="both", seed=1)


def test_both_methods_scored_on_the_same_problems(both):
    df = both.main()
    n = df.pivot_table(index=["scale", "target"], columns="method", values="n")
    assert (n["probe"] == n["logit_lens"]).all()
    assert {"chance", "control", "selectivity"} <= set(df.columns)
    probe = df[df["method"] == "probe"]
    assert ((probe["selectivity"] - (probe["accuracy"] - probe["control"])).abs() <= 2e-6).all()  # six significant digits each
    places = set(both.to_dataframe()["place"])
    assert {"all", "units", "tens"} <= places


def test_difference_and_selectivity_figures(both):
    diff = both.difference("probe", "logit_lens", target="answer")
    expected = both.pivot("probe", "answer") - both.pivot("logit_lens", "answer")
    pd.testing.assert_frame_equal(diff.pivot("probe - logit_lens", "answer"), expected)
    assert diff.figure().layout.title.text == "Accuracy Difference"
    fig = both.figure(value="selectivity")
    assert fig.layout.title.text.startswith("Selectivity") and len(fig.data) == 2  # probes only, two targets
    units = both.figure(place="units")
    assert all(t.name.startswith("probe") for t in units.data)
    assert len(both.figure().data) == 4  # two methods x two targets, faceted


def test_probe_scope_from_api_and_cli(llama_dir, llama_model, tmp_path, capsys):
    pooled = ld.run_sweep(llama_model, scales=[1, 2], n_per_scale=60, methods=["probe"], target="answer", probe_scope="pooled", seed=1)
    assert pooled.info["methods"]["probe"]["scope"] == "pooled"
    out = tmp_path / "run"
    code = main(
        ["run", "--model", str(llama_dir), "--scales", "1-2", "--n", "60", "--seed", "1", "--methods", "logit_lens,probe"]
        + ["--probe-scope", "pooled", "--target", "answer", "--out", str(out), "--no-progress"]
    )
    assert code == 0
    csv = pd.read_csv(out / "grid.csv", keep_default_na=False, na_values=[""])
    api = pooled.to_dataframe()
    probe_rows = csv[csv["method"] == "probe"].reset_index(drop=True)
    pd.testing.assert_frame_equal(probe_rows[api.columns], api, check_dtype=False)
    assert ld.AccuracyGrid.load(out).figure().layout.title.text == "Accuracy Breakdown"


def test_places_a_scale_does_not_have_get_no_rows(both):
    df = both.to_dataframe()
    probe = df[(df["method"] == "probe") & (df["target"] == "answer")]
    # 1-digit sums are at most 18: two places; 2-digit sums at most 198: three places
    assert set(probe.loc[probe["scale"] == 1, "place"]) == {"all", "units", "tens"}
    assert set(probe.loc[probe["scale"] == 2, "place"]) == {"all", "units", "tens", "hundreds"}
