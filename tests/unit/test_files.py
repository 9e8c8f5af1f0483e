"""A run directory read back, trusting nothing: damaged files are named with their line, newer keys are skipped with a warning."""

import pandas as pd
import pytest

import lens_digits as ld
from lens_digits.results.grid import AccuracyGrid

# The fixtures `grid` and `saved` (that grid's run directory) are in conftest.py.


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
