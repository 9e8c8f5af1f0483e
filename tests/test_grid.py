import json
from pathlib import Path

import pandas as pd
import pytest

import lens_digits as ld
from lens_digits.grid import CONTRACT_COLUMNS, FILES, AccuracyGrid, wilson_interval


@pytest.fixture(scope="module")
def grid(native_model):
    return ld.run_sweep(native_model, scales=[1, 2, 3], n_per_scale=40, target="both", seed=2)


def test_table_has_contract_columns_and_one_row_per_cell(grid, native_model):
    df = grid.to_dataframe()
    assert list(df.columns[: len(CONTRACT_COLUMNS)]) == CONTRACT_COLUMNS
    assert {"ci_low", "ci_high", "gold_rank", "gold_prob"} <= set(df.columns)
    n_layers = native_model.cfg.n_layers
    assert len(df) == 2 * 3 * (n_layers + 1)
    assert not df.duplicated(["method", "target", "scale", "layer"]).any()
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
    assert run["versions"]["transformer-lens"] == ld.models.transformer_lens_version()
    assert "Accuracy Breakdown" in (out / "heatmap.html").read_text()


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

    monkeypatch.setattr(AccuracyGrid, "figure", boom)
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
        assert "n %{customdata}" in trace.hovertemplate


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
    assert "logit_lens · target=answer" in text and "logit_lens · target=first" in text
    assert all(f"\n{s} " in text for s in (1, 2, 3))


def test_registered_user_decoder_is_drawn_beside_built_in(native_model):
    import torch

    class Always(ld.Decoder):
        name = "test_always_right"

        def score(self, data, target):
            return ld.Scores(torch.ones(len(data), data.n_columns, dtype=torch.bool))

    ld.register_decoder(Always)
    with pytest.warns(UserWarning, match="registered again"):  # a notebook cell run twice
        ld.register_decoder(Always)

    class Impostor(ld.Decoder):
        name = "test_always_right"

        def score(self, data, target):
            raise AssertionError

    with pytest.raises(ld.LensDigitsError, match="already registered"):  # another class may not take the name
        ld.register_decoder(Impostor)
    grid = ld.run_sweep(native_model, scales=[1, 2], n_per_scale=20, methods=["logit_lens", "test_always_right"], target="first")
    df = grid.to_dataframe()
    assert (df.loc[df["method"] == "test_always_right", "accuracy"] == 1).all()
    assert len(grid.figure().data) == 2


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


# ---- a run directory read back, trusting nothing ------------------------------------------------


@pytest.fixture(scope="module")
def saved(grid, tmp_path_factory):
    return grid.save(tmp_path_factory.mktemp("saved") / "run")


def tampered(saved, tmp_path, name, edit):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    path = copy / name
    path.write_text(edit(path.read_text()))
    return copy


def _set_cell(text, column, value, row=1):
    lines = text.splitlines()
    header = lines[0].split(",")
    cells = lines[row].split(",")
    cells[header.index(column)] = value
    lines[row] = ",".join(cells)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "name,edit,message",
    [
        ("grid.csv", lambda t: t[: len(t) // 2], r"grid.csv(, line \d+)?: .*(incomplete|truncated|must be|missing)"),
        (
            "grid.csv",
            lambda t: "\n".join(t.splitlines()[:-3]) + "\n",
            r"layers 0\.\.\d but the grid has layers 0\.\.3; the file is incomplete",
        ),
        ("grid.csv", lambda t: _set_cell(t, "accuracy", "abc"), r"grid.csv, line 2: accuracy must be a number, got 'abc'"),
        ("grid.csv", lambda t: _set_cell(t, "accuracy", "7.5"), r"grid.csv, line 2: accuracy must lie between 0 and 1"),
        ("grid.csv", lambda t: _set_cell(t, "n", "-3", row=4), r"grid.csv, line 5: n must be an integer >= 0"),
        ("grid.csv", lambda t: _set_cell(t, "layer", "1.5", row=3), r"grid.csv, line 4: layer must be an integer"),
        ("grid.csv", lambda t: "", r"grid.csv is empty"),
        ("grid.csv", lambda t: t.splitlines()[0] + "\n", r"has a header and no cells"),
        ("grid.csv", lambda t: t + t.splitlines()[1] + "\n", r"grid.csv, line \d+: repeats the cell .* of line 2"),
        ("grid.csv", lambda t: t.replace("accuracy", "acc", 1), r"lacks column\(s\) \['accuracy'\]"),
        ("grid.csv", lambda t: t + "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p\n", r"grid.csv"),
        ("run.json", lambda t: t[:-10], r"run.json, line \d+: not valid JSON"),
        ("run.json", lambda t: "[1, 2]", r"run.json: expected a JSON object"),
        ("prompts.jsonl", lambda t: t.replace("}", "", 1), r"prompts.jsonl, line 1: not valid JSON"),
        ("prompts.jsonl", lambda t: t.replace('"scale": ', '"scale_": ', 1), r"prompts.jsonl, line 1: missing key\(s\) \['scale'\]"),
        ("prompts.jsonl", lambda t: t.replace('"split": "', '"split": "x', 1), r"prompts.jsonl, line 1: split must be"),
    ],
)
def test_load_refuses_a_tampered_run_directory_naming_file_and_line(saved, tmp_path, name, edit, message):
    copy = tampered(saved, tmp_path, name, edit)
    with pytest.raises(ld.RunDirectoryError, match=message):
        AccuracyGrid.load(copy)


def test_load_keeps_going_past_keys_from_a_newer_version(saved, tmp_path):
    def add_key(text):
        return "\n".join(line[:-1] + ', "new_field": 1}' for line in text.splitlines()) + "\n"

    copy = tampered(saved, tmp_path, "prompts.jsonl", add_key)
    with pytest.warns(UserWarning, match="new_field"):
        back = AccuracyGrid.load(copy)
    assert back.problems == AccuracyGrid.load(saved).problems


def test_load_reads_a_difference_grid_with_negative_cells(grid, tmp_path):
    df = grid.to_dataframe().copy()
    other = df.assign(method="other", accuracy=1.0)
    diff = AccuracyGrid(pd.concat([df, other]), grid.problems, grid.info).difference("logit_lens", "other", target="answer")
    assert (diff.to_dataframe()["accuracy"] < 0).any()
    back = AccuracyGrid.load(diff.save(tmp_path / "diff"))
    pd.testing.assert_frame_equal(back.to_dataframe(), diff.to_dataframe(), check_dtype=False)


# ---- run directories of earlier versions ---------------------------------------------------------

SCHEMA1 = Path(__file__).parent / "data" / "run_schema1"  # written by lens-digits 0.1.0 before run.json had a schema


def test_a_run_directory_of_the_previous_schema_loads(tmp_path):
    grid = AccuracyGrid.load(SCHEMA1)
    record = grid.record
    assert record.schema == 1 and record.seed == 0 and record.targets == ["first", "answer"]
    assert set(grid.methods) == {"logit_lens", "probe"} and grid.breakdown_columns == ["place"]
    assert len(grid.problems) == 40 and grid.problems[0].split in ("train", "val", "test")
    assert grid.pivot("logit_lens", "answer").shape == (2, 5)
    # --overwrite recognises it as a run directory of this package, and writes the current schema
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(SCHEMA1, copy)
    grid.save(copy, overwrite=True)
    assert json.loads((copy / "run.json").read_text())["schema"] == ld.record.RUN_SCHEMA


def test_run_json_records_what_was_fed_and_read(saved, grid, native_model):
    record = AccuracyGrid.load(saved).record
    assert record.schema == ld.record.RUN_SCHEMA and record.sweep["targets"] == ["first", "answer"]
    bos = record.encoding["bos"]
    assert bos["prepended"] is True and bos["id"] == native_model.tokenizer.bos_token_id and bos["token"] == "<s>"
    assert record.methods["logit_lens"]["readout"]["steps"][1] == "unembedding"
    tok = native_model.tokenizer
    for scale in ("1", "2", "3"):
        ex = record.encoding["examples"][scale]
        # enough to redo the cell with plain Hugging Face: the ids are the tokenizer's, BOS first
        assert ex["prompt_ids"] == [bos["id"]] + tok(ex["prompt"], add_special_tokens=False)["input_ids"]
        assert "".join(ex["prompt_tokens"][1:]) == ex["prompt"] and "".join(ex["answer_tokens"]) == ex["answer"]
