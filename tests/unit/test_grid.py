"""AccuracyGrid: the table, saving a run directory, the figure, differences and the text table."""

import json

import pandas as pd
import pytest

import lens_digits as ld
from lens_digits.results.cells import wilson_interval
from lens_digits.results.grid import CONTRACT_COLUMNS, FILES, AccuracyGrid

# The fixture `grid` (a sweep of a tiny model, both targets) is in conftest.py.


def test_table_has_contract_columns_and_one_row_per_cell(grid, native_model):
    df = grid.to_dataframe(breakdown=False)
    assert list(df.columns[: len(CONTRACT_COLUMNS)]) == CONTRACT_COLUMNS
    assert {"ci_low", "ci_high", "gold_rank", "gold_prob"} <= set(df.columns)
    n_layers = native_model.cfg.n_layers
    assert len(df) == 2 * 3 * (n_layers + 1)
    assert not df.duplicated(["method", "target", "scale", "layer"]).any()
    everything = grid.to_dataframe()
    assert not everything.duplicated(["method", "target", "scale", "layer", *grid.breakdown_columns]).any()
    assert sorted(df["layer"].unique()) == list(range(n_layers + 1))
    assert ((df["ci_low"] <= df["accuracy"]) & (df["accuracy"] <= df["ci_high"])).all()
    # n is the number of test problems of the scale, the same for every cell of that scale
    tests = pd.Series([p.scale for p in grid.problems if p.split == "test"]).value_counts()
    assert (df["n"] == df["scale"].map(tests)).all()


def test_wilson_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)


def test_save_load_round_trip(grid, tmp_path):
    out = grid.save(tmp_path / "run")
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    back = AccuracyGrid.load(out)
    pd.testing.assert_frame_equal(back.to_dataframe(), grid.to_dataframe())
    assert back.problems == grid.problems
    assert back.info["task"]["scales"] == [1, 2, 3] and back.info["seed"] == 2
    csv = pd.read_csv(out / "grid.csv")
    assert list(csv.columns[:6]) == CONTRACT_COLUMNS
    lines = (out / "prompts.jsonl").read_text().splitlines()
    assert len(lines) == len(grid.problems)
    first = json.loads(lines[0])
    assert {"scale", "op", "a", "b", "prompt", "answer", "split"} <= set(first)
    run = json.loads((out / "run.json").read_text())
    assert {"model", "task", "seed", "versions", "methods"} <= set(run)
    assert run["versions"]["transformer-lens"] == ld.model.checkpoints.transformer_lens_version()
    assert '<meta name="generator" content="lens-digits report' in (out / "report.html").read_text()
    assert 'url=report.html"' in (out / "heatmap.html").read_text()  # the name of earlier releases opens the report
    assert len(back.examples) == len((out / "examples.jsonl").read_text().splitlines()) > 0
    assert back.examples == json.loads(json.dumps(grid.examples))


def test_save_refuses_non_empty_folder_and_overwrites_only_a_run_directory(grid, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ld.LensDigitsError, match="not empty"):
        grid.save(out)
    with pytest.raises(ld.LensDigitsError, match="not written by lens-digits"):
        grid.save(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    run = grid.save(tmp_path / "run2")
    with pytest.raises(ld.LensDigitsError, match="not empty"):
        grid.save(run)
    grid.save(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == sorted(FILES)
    assert json.loads((run / "run.json").read_text())["format"] == "lens_digits.run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run2"]  # no temporary folders or locks left


def test_failed_save_leaves_nothing(grid, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    from lens_digits.results.page import Report

    monkeypatch.setattr(Report, "html", boom)  # the report is written after grid.csv and prompts.jsonl
    with pytest.raises(RuntimeError):
        grid.save(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_a_clear_error(grid, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ld.LensDigitsError, match="not writable|is a file"):
        grid.save(blocker / "run")


def test_figure_axes_title_and_values(grid):
    fig = grid.figure()
    assert fig.layout.title.text == "Accuracy Breakdown"
    assert len(fig.data) == 2  # one panel per target
    assert fig.layout.xaxis.title.text == "layer" or fig.layout.xaxis2.title.text == "layer"
    assert fig.layout.yaxis.title.text == "Digit Scale"
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == 1
    for trace in fig.data:
        method, target = trace.name.split(" · ")
        pivot = grid.pivot(method, target)
        assert list(trace.x) == list(pivot.columns)
        assert list(trace.y) == [str(s) for s in pivot.index]
        assert (trace.z == pivot.to_numpy()).all()
        assert "n %{customdata[0]:.0f}" in trace.hovertemplate and "95% interval %{customdata[1]" in trace.hovertemplate
        n = grid.pivot(method, target, "n").to_numpy()
        assert (trace.customdata[..., 0] == n).all()
    # the subtitle says what is shown: methods, targets and test problems per scale
    subtitle = fig.layout.title.subtitle.text
    assert "logit_lens" in subtitle and "target first, answer" in subtitle and "test problems per scale" in subtitle


def test_difference_grid(grid):
    df = grid.to_dataframe().copy()
    other = df.copy()
    other["method"] = "other"
    other["accuracy"] = 1.0
    both = AccuracyGrid(pd.concat([df, other]), grid.problems, grid.info)
    diff = both.difference("other", "logit_lens", target="answer")
    d = diff.to_dataframe()
    expected = 1.0 - grid.pivot("logit_lens", "answer")
    assert (diff.pivot("other - logit_lens", "answer") == expected).all().all()
    assert set(d["method"]) == {"other - logit_lens"}
    fig = diff.figure()
    assert fig.layout.coloraxis.cmin == -fig.layout.coloraxis.cmax


def test_text_table_lists_every_scale(grid):
    text = grid.to_text()
    assert "logit_lens · target answer" in text and "logit_lens · target first" in text
    assert all(f"\n{s} " in text for s in (1, 2, 3))


def test_breakdown_rows_are_kept_apart_from_whole_cells():
    rows = []
    for place in ("all", "units", "tens"):
        for layer in range(2):
            rows.append({"method": "m", "target": "answer", "scale": 1, "layer": layer, "accuracy": 0.5, "n": 4, "place": place})
    grid = AccuracyGrid(pd.DataFrame(rows))
    assert grid.breakdown_columns == ["place"]
    assert len(grid.main()) == 2 and set(grid.main()["place"]) == {"all"}
    assert grid.pivot("m", "answer").shape == (1, 2)
    assert len(grid.figure(place="tens").data) == 1


def test_print_shows_the_tables_and_pivot_asks_which_panel(grid):
    text = str(grid)
    assert text == grid.to_text()
    assert "n = " in text and "±95%" in text and "baseline" in text
    with pytest.raises(ld.LensDigitsError, match="2 targets"):
        grid.pivot()
    assert grid.pivot(target="answer").shape[0] == 3
