"""run.json: records of earlier schemas still load, and a record says what was fed to the model and how it was read."""

import json

from conftest import REPO

import lens_digits as ld
from lens_digits.results.grid import AccuracyGrid

SCHEMA1 = REPO / "tests" / "data" / "run_schema1"  # written by lens-digits 0.1.0 before run.json had a schema


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
