"""``lens-digits report``: where the page goes, what it holds, and the one-line errors (no browser here)."""

import base64
import gzip
import json
import re

import pandas as pd
import pytest

import lens_digits as ld
from lens_digits.cli import main


def runs_in_page(path):
    packed = re.search(r'id="ld-data">([^<]*)<', path.read_text()).group(1)
    return [run["label"] for run in json.loads(gzip.decompress(base64.b64decode(packed)))["runs"]]


def small_run(folder, model, accuracy):
    table = pd.DataFrame(
        {"method": ["m"] * 4, "target": ["first"] * 4, "scale": [1, 1, 2, 2], "layer": [0, 1, 0, 1], "accuracy": accuracy, "n": [10] * 4}
    )
    return ld.AccuracyGrid(table, info={"model": {"name": model}}).save(folder)


@pytest.fixture
def two(tmp_path):
    return small_run(tmp_path / "a", "model-a", [0.2, 0.9, 0.1, 0.8]), small_run(tmp_path / "b", "model-b", [0.3, 0.7, 0.0, 0.5])


def error_line(capsys, args):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_a_run_directorys_report_is_written_again_in_place(two, capsys):
    a, _ = two
    (a / "report.html").write_text((a / "report.html").read_text().replace("model-a", "stale"))
    assert main(["report", str(a)]) == 0
    assert "wrote " + str(a / "report.html") in capsys.readouterr().out
    assert "stale" not in (a / "report.html").read_text() and runs_in_page(a / "report.html") == ["a"]
    assert ld.AccuracyGrid.load(a).table["accuracy"].tolist() == [0.2, 0.9, 0.1, 0.8]  # the run is untouched


def test_several_runs_need_out_and_an_existing_page_needs_overwrite(two, tmp_path, capsys):
    a, b = two
    assert "name the page to write with --out FILE.html" in error_line(capsys, ["report", str(a), str(b)])
    page = tmp_path / "both.html"
    assert main(["report", str(a), str(b), "--out", str(page), "--title", "a vs b"]) == 0
    assert runs_in_page(page) == ["a", "b"] and "<title>Accuracy Breakdown · a vs b</title>" in page.read_text()
    assert "replace that report with --overwrite" in error_line(capsys, ["report", str(a), "--out", str(page)])
    assert main(["report", str(a), "--out", str(page), "--overwrite"]) == 0 and runs_in_page(page) == ["a"]
    mine = tmp_path / "notes.html"
    mine.write_text("mine")
    assert "is not a report written by lens-digits" in error_line(capsys, ["report", str(a), "--out", str(mine), "--overwrite"])
    assert mine.read_text() == "mine"


def test_folders_that_are_not_runs_are_named(two, tmp_path, capsys):
    assert "does not exist" in error_line(capsys, ["report", str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    assert "is not a run directory (it has no grid.csv) nor a study folder" in error_line(capsys, ["report", str(tmp_path / "empty")])
    (two[0] / "grid.csv").write_text("not,a,grid\n")
    assert "grid.csv" in error_line(capsys, ["report", str(two[0]), "--out", str(tmp_path / "x.html")])
    assert not (tmp_path / "x.html").exists()


def test_a_study_folders_units_are_the_pages_runs(tmp_path, capsys):
    study = tmp_path / "study"
    small_run(study / "model-a" / "add", "model-a", [0.2, 0.9, 0.1, 0.8])
    small_run(study / "model-b" / "add", "model-b", [0.3, 0.7, 0.0, 0.5])
    units = [{"out": f"{m}/add", "model": {"name": m}, "task_name": "add"} for m in ("model-a", "model-b")]
    (study / "study.json").write_text(json.dumps({"format": "lens_digits.study", "status": "done", "units": units}))
    assert main(["report", str(study)]) == 0
    assert runs_in_page(study / "report.html") == ["model-a · add", "model-b · add"]
