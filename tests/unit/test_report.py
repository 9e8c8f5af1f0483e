"""The report page's file and data, and the example readings behind its panel.

No browser here: tests/integration/test_report_browser.py drives the page in Chromium.
"""

import base64
import gzip
import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest

import lens_digits as ld
from lens_digits.methods.examples import N_EXAMPLES, breakdown_keys, example_rows
from lens_digits.methods.scores import Scores
from lens_digits.problems.tasks import Problem
from lens_digits.results.examples import read_examples
from lens_digits.results.page import GENERATOR, Report, check_report_path, is_report
from lens_digits.results.provenance import provenance

ASSETS = Path(ld.__file__).parent / "results" / "assets"


@pytest.fixture(scope="module")
def mixed(native_model):
    # 20 test problems a scale: every example sample is the whole cell, so examples and cells must agree exactly
    methods = ["logit_lens", "probe", "patch"]
    quick = {"probe": {"Cs": [1.0], "max_iter": 200}}
    return ld.run_sweep(
        native_model, scales=[1, 2], n_per_scale=20, n_train=30, n_val=10, methods=methods, target="both", seed=3, method_options=quick
    )


def payload(page: str) -> dict:
    packed = re.search(r'<script type="application/octet-stream" id="ld-data">([^<]*)</script>', page).group(1)
    return json.loads(gzip.decompress(base64.b64decode(packed)))


def test_example_rows_are_a_seeded_sample_of_each_scale_among_the_counted_problems():
    problems = [Problem(1 + i % 3, "add", i, 1, f"{i}+1=", str(i + 1), "test") for i in range(150)]
    rows = example_rows(problems, seed=4)
    assert rows == sorted(rows) == example_rows(problems, seed=4)
    assert [sum(problems[r].scale == s for r in rows) for s in (1, 2, 3)] == [N_EXAMPLES] * 3
    assert rows != example_rows(problems, seed=5)
    counted = [i % 4 == 0 for i in range(150)]
    only = example_rows(problems, seed=4, applies=counted)
    assert only and all(counted[r] for r in only)
    # a scale's sample does not depend on the other scales
    without_3 = [p for p in problems if p.scale != 3]
    same = [problems[r].prompt for r in rows if problems[r].scale == 1]
    assert [without_3[r].prompt for r in example_rows(without_3, seed=4) if without_3[r].scale == 1] == same


def test_breakdown_keys_name_every_row_that_counts_a_problem_nested_ones_included():
    import torch

    yes, no = torch.tensor([True, False]), torch.tensor([False, True])
    units = Scores(torch.ones(2, 3, dtype=torch.bool), applies=None)
    units.breakdown = {"carry_in": {"yes": Scores(units.correct, applies=yes), "no": Scores(units.correct, applies=no)}}
    scores = Scores(torch.ones(2, 3, dtype=torch.bool))
    scores.breakdown = {"place": {"units": units}, "carries": {"1": Scores(scores.correct, applies=yes)}}
    assert breakdown_keys(scores, 0) == ["place=units", "carry_in=yes|place=units", "carries=1"]
    assert breakdown_keys(scores, 1) == ["place=units", "carry_in=no|place=units"]


def test_examples_agree_with_the_cells_they_come_from(mixed):
    table = mixed.main()
    records = mixed.examples
    assert {(r["method"], r["target"]) for r in records} == {(m, t) for m in ("logit_lens", "probe", "patch") for t in ("first", "answer")}
    for (method, target, scale), group in pd.DataFrame(records).groupby(["method", "target", "scale"]):
        cells = table[(table["method"] == method) & (table["target"] == target) & (table["scale"] == scale)].sort_values("layer")
        assert len(group) == int(cells["n"].iloc[0]) <= N_EXAMPLES  # the whole cell: its n problems
        for layer, accuracy in zip(cells["layer"], cells["accuracy"], strict=True):
            ok = [r[layer]["ok"] for r in group["layers"]]
            assert sum(ok) / len(ok) == pytest.approx(accuracy, abs=1e-6), (method, target, scale, layer)


def test_each_reading_says_what_its_method_read(mixed):
    tests = {(p.seed, p.prompt): p for p in mixed.problems if p.split == "test"}
    for r in mixed.examples:
        problem = tests[(r["seed"], r["prompt"])]  # every example is a test problem of prompts.jsonl
        assert (problem.scale, problem.answer) == (r["scale"], r["answer"])
        assert len(r["layers"]) == int(mixed.table["layer"].max()) + 1
        for reading in r["layers"]:
            if r["method"] == "logit_lens":
                tokens = reading["tokens"]
                assert "".join(t["gold"] for t in tokens) == r["gold"] == (r["answer"] if r["target"] == "answer" else r["answer"][0])
                for t in tokens:
                    probs = [p for _, p in t["top"]]
                    assert len(t["top"]) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.001
                    assert (t["rank"] == 0) == (t["top"][0][0] == t["gold"]) or probs[0] == probs[1]
                assert reading["ok"] == (reading["read"] == r["gold"])
            elif r["method"] == "probe":
                if r["target"] == "answer":  # every place of the scale's probes, leading zeros included (as the cells count)
                    assert r["gold"].endswith(r["answer"]) and set(r["gold"][: -len(r["answer"])]) <= {"0"}
                else:
                    assert r["gold"] == r["answer"][0]
                assert reading["ok"] == (reading["read"] == r["gold"]) and reading["read"].isdigit()
            else:  # patching: the source's answer is what a flip reads
                assert problem.patch_source == r["notes"]["source"] and tests[(r["seed"], r["notes"]["source"])].scale == r["scale"]
                assert reading["note"] in ("flip", "keep", "neither") and reading["ok"] == (reading["note"] == "flip")
                if r["target"] == "answer":
                    assert reading["ok"] == (reading["read"] == r["notes"]["source answer"] == r["gold"])


def test_examples_round_trip_and_a_damaged_file_is_named(mixed, tmp_path):
    out = mixed.save(tmp_path / "run")
    back = ld.AccuracyGrid.load(out)
    assert back.examples == json.loads(json.dumps(mixed.examples))
    lines = (out / "examples.jsonl").read_text().splitlines()
    (out / "examples.jsonl").write_text(lines[0] + "\n" + lines[1][:-20] + "\n")
    with pytest.raises(ld.RunDirectoryError, match=r"examples\.jsonl, line 2: not valid JSON"):
        ld.AccuracyGrid.load(out)
    broken = json.loads(lines[0])
    del broken["layers"]
    (out / "examples.jsonl").write_text(json.dumps(broken) + "\n")
    with pytest.raises(ld.RunDirectoryError, match=r"examples\.jsonl, line 1: missing key 'layers'"):
        read_examples(out / "examples.jsonl")


def test_the_page_is_one_file_with_no_outside_reference(mixed):
    page = mixed.report().html()
    assert page == mixed.report().html()  # the same grid gives the same bytes
    assert f'<meta name="generator" content="{GENERATOR}' in page
    assert not re.search(r"<script[^>]*\bsrc=|<link\b|<img\b|<iframe\b|@import", page, re.I) and not re.search(r"[^.\w]url\(", page)
    assert not re.search(r"https?://", page)  # plotly.js is inside, compressed; nothing names a server
    data = payload(page)
    run = data["runs"][0]
    in_order = list(dict.fromkeys(zip(mixed.table["method"], mixed.table["target"], strict=True)))
    assert [(r["method"], r["target"]) for r in run["readings"]] == in_order
    assert run["csv"] == mixed.table.to_csv(index=False)
    assert run["examples"] == json.loads(json.dumps(mixed.examples))
    assert {"accuracy", "gold_prob", "chance", "control", "selectivity", "keep"} <= set(run["values"])
    assert run["references"] == ["baseline", "chance", "control"]
    assert run["breakdown"] == mixed.breakdown_columns
    assert [r["accuracy"] for r in run["readings"] if r["method"] == "patch"] == ["flip rate", "flip rate"]
    packed = re.search(r'id="ld-plotly">([^<]*)<', page).group(1)
    assert b"plotly" in gzip.decompress(base64.b64decode(packed))[:2000].lower()


def test_the_page_knows_no_method_by_name():
    # a reading of another branch or a plug-in appears with no code of its own: the page has none for any method
    script = (ASSETS / "report.js").read_text()
    for name in ("logit_lens", "tuned_lens", "probe", "patch", "selectivity", "gold_prob", "place", "carries"):
        assert not re.search(rf"\b{name}\b", script), name
    table = pd.DataFrame(
        {
            "method": ["made_up"] * 4,
            "target": ["first"] * 4,
            "scale": [1, 1, 1, 1],
            "layer": [0, 1, 0, 1],
            "accuracy": [0.2, 0.9, 0.1, 0.8],
            "n": [10, 10, 5, 5],
            "loudness": [3.0, 4.5, 1.0, 2.0],
            "colour": ["all", "all", "red", "red"],
        }
    )
    run = payload(Report([ld.AccuracyGrid(table)], ["mine"]).html())["runs"][0]
    assert run["readings"][0]["method"] == "made_up" and run["values"] == ["accuracy", "loudness"] and run["breakdown"] == ["colour"]
    assert run["examples"] == [] and run["label"] == "mine"


def test_provenance_names_model_task_reading_software_and_command(mixed):
    facts = {group: dict(items) for group, items in provenance(mixed.info | {"command": "lens-digits run --out x"})}
    model = mixed.info["model"]
    assert facts["model"]["parameters"] == f"{model['n_params']:,}" and model["n_params"] > 0
    assert facts["model"]["weights fingerprint"] == model["weights"][:16] and facts["model"]["layers"] == str(model["n_layers"])
    assert facts["task"]["digit scales"] == "1, 2" and facts["task"]["test problems per scale"] == "20" and facts["task"]["seeds"] == "3"
    assert facts["reading"]["lens norm"] == "final" and facts["reading"]["BOS"].startswith(("prepended", "none"))
    assert facts["software"]["transformer-lens"] == mixed.info["versions"]["transformer-lens"]
    assert facts["run"]["command"] == "lens-digits run --out x"
    assert provenance({}) == []


def test_a_report_is_written_only_where_nothing_of_the_users_is_replaced(mixed, tmp_path):
    page = tmp_path / "page.html"
    for bad, match in (
        (tmp_path / "page.txt", "ending in .html"),
        (tmp_path / "missing" / "page.html", "does not exist"),
    ):
        with pytest.raises(ld.OutputError, match=match):
            check_report_path(bad)
    report = mixed.report()
    assert report.save(page) == page and is_report(page)
    with pytest.raises(ld.OutputError, match="exists; choose another path, or replace that report with --overwrite"):
        report.save(page)
    report.save(page, overwrite=True)
    mine = tmp_path / "mine.html"
    mine.write_text("<html>my notes</html>")
    with pytest.raises(ld.OutputError, match="not a report written by lens-digits"):
        report.save(mine, overwrite=True)
    assert mine.read_text() == "<html>my notes</html>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.html", "page.html"]  # no temporary file left


def test_a_notebook_shows_the_page_inline(mixed):
    shown = mixed.report()._repr_html_()
    head, tail = '<iframe srcdoc="', '" style="width:100%;height:980px;border:0"></iframe>'
    assert shown.startswith(head) and shown.endswith(tail)
    inner = shown[len(head) : -len(tail)]
    assert inner.startswith("&lt;!DOCTYPE html&gt;") and "&quot;" in inner and '"' not in inner  # the attribute is never cut short
    assert html.unescape(inner) == mixed.report().html()


def test_labels_name_each_run_once():
    table = pd.DataFrame({"method": ["m"], "target": ["first"], "scale": [1], "layer": [0], "accuracy": [0.5], "n": [2]})
    grid = ld.AccuracyGrid(table, info={"model": {"name": "/models/same"}})
    assert Report([grid, grid]).labels == ["same", "same #2"]
    with pytest.raises(ld.LensDigitsError, match="one label per grid"):
        Report([grid], ["a", "b"])


def test_a_figure_page_holds_plotly_once_compressed_and_its_figures_readable():
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs

    from lens_digits.results.offline import figure_page

    figures = [go.Figure(go.Heatmap(z=[[0.1, 0.9]]), layout={"title": {"text": "a </script> b"}}), go.Figure(go.Scatter(y=[1, 2]))]
    page = figure_page(*figures, title="two <figures>")
    assert page.count("<script") == 4 and "<title>two &lt;figures&gt;</title>" in page  # plotly, two figures, the drawing script
    packed = re.search(r'id="ld-plotly">([^<]*)<', page).group(1)
    assert gzip.decompress(base64.b64decode(packed)).decode() == get_plotlyjs()
    assert len(page) < 0.5 * len(get_plotlyjs())  # 4.8 MB of plotly.js in about 2 MB
    held = re.findall(r'<script type="application/json" data-figure="(figure-\d)">([^<]*)</script>', page)
    assert [name for name, _ in held] == ["figure-0", "figure-1"]
    assert json.loads(held[0][1])["layout"]["title"]["text"] == "a </script> b" and json.loads(held[1][1])["data"][0]["type"] == "scatter"
