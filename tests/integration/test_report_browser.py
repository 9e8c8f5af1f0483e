"""The report page in a real browser: the system's Chromium, driven by Playwright (see tests/browser.py).

The page is opened from disk as a user would (a file:// URL), with every request outside the file refused
and recorded. Each test checks what the page shows against the run directory's own files.
"""

import json
import sys
import time

import pandas as pd
import pytest
from browser import REQUIRE, chromium, find_chromium, no_browser, pixels
from conftest import REPO

import lens_digits as ld
from lens_digits.cli import main

sys.path.insert(0, str(REPO / "scripts"))
from report_screenshot import CELL  # noqa: E402 - where the heatmap's cell (scale, layer) is in the window

METHODS = ["logit_lens", "probe", "patch"]
QUICK = {"probe": {"Cs": [1.0], "max_iter": 200}}

FIGURE = """() => {
  const gd = document.getElementById("figure");
  return JSON.stringify({ data: gd.data.map((d) => [d.type, d.name, d.z, d.y]), title: gd.layout.title });
}"""
"""What the figure draws, as text: two renders that draw the same thing give the same text."""


def sweep(model, seed):
    return ld.run_sweep(
        model, scales=[1, 2], n_per_scale=20, n_train=30, n_val=10, methods=METHODS, target="both", seed=seed, method_options=QUICK
    )


@pytest.fixture(scope="module")
def runs(native_model, tmp_path_factory):
    """Two run directories (the same model, two problem draws) with six readings each at digit scales 1-2."""
    root = tmp_path_factory.mktemp("report")
    return [sweep(native_model, seed).save(root / f"seed{seed}") for seed in (3, 4)]


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


class Opened:
    """A page opened from disk, with what it logged as errors and the requests it tried outside its file."""

    def __init__(self, browser, path):
        self.context = browser.new_context(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
        self.page = self.context.new_page()
        self.errors, self.outside, self.requests = [], [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.context.route("**/*", self._only_the_file)
        started = time.perf_counter()
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_selector("body[data-ready='1']", timeout=20_000)
        self.seconds = time.perf_counter() - started

    def _only_the_file(self, route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def figure(self):
        return self.page.evaluate(FIGURE)

    def choose(self, select, value):
        """Pick ``value`` in the selector and wait until the figure draws something else."""
        before = self.figure()
        self.page.select_option(select, value)
        self.page.wait_for_function(f"(before) => ({FIGURE})() !== before", arg=before, timeout=5_000)

    def point(self, scale, layer):
        """Move the mouse onto the heatmap's cell and wait for its hover label (plotly clicks the point last hovered).

        Returns:
            The hover label's text.
        """
        self.page.locator("#figure").scroll_into_view_if_needed()
        x, y = self.page.evaluate(CELL, [scale, layer])
        self.page.mouse.move(x, y)
        label = self.page.locator(".hoverlayer .hovertext", has_text=f"layer {layer}").filter(has_text=f"digit scale {scale}")
        label.wait_for(timeout=5_000)
        return label.text_content()

    def click(self, scale, layer):
        self.point(scale, layer)
        self.page.mouse.down()
        self.page.mouse.up()

    def close(self):
        assert self.errors == [] and self.outside == [], (self.errors, self.outside)
        self.context.close()


@pytest.fixture
def opened(browser, runs):
    page = Opened(browser, runs[0] / "report.html")
    yield page
    page.close()  # no test may end with a console error or a request outside the file


def cells(run_dir, method, target):
    main_rows = ld.AccuracyGrid.load(run_dir).main()
    return main_rows[(main_rows["method"] == method) & (main_rows["target"] == target)].set_index(["scale", "layer"])


def examples_of(run_dir, method, target, scale):
    records = [json.loads(line) for line in (run_dir / "examples.jsonl").read_text().splitlines()]
    return [r for r in records if (r["method"], r["target"], r["scale"]) == (method, target, scale)]


def visible(text):
    return text.replace(" ", "␣").replace("\n", "⏎")


def test_the_tests_skip_without_a_browser_and_fail_where_one_is_required(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("LENS_DIGITS_CHROMIUM", raising=False)
    assert find_chromium() is None
    monkeypatch.delenv(REQUIRE, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium"):
        no_browser("no Chromium or Chrome found")
    monkeypatch.setenv(REQUIRE, "1")
    with pytest.raises(pytest.fail.Exception, match="required"):
        no_browser("no Chromium or Chrome found")


def test_the_page_opens_offline_with_no_error_and_draws_the_grid(opened, runs, browser):
    page = opened.page
    assert opened.requests == [(runs[0] / "report.html").resolve().as_uri()]  # the file itself, nothing else
    assert opened.seconds < 10, opened.seconds  # about 1.5 s on a 2-core CPU
    info = json.loads((runs[0] / "run.json").read_text())
    header = page.locator("#provenance .run").first.inner_text()
    assert info["model"]["weights"][:16] in header and f"{info['model']['n_params']:,}" in header and "transformer-lens" in header
    drawn = json.loads(opened.figure())
    assert [d[0] for d in drawn["data"]][0] == "heatmap" and drawn["title"]["text"].startswith("Accuracy Breakdown · logit_lens · first")
    grid = cells(runs[0], "logit_lens", "first")
    assert drawn["data"][0][2] == [[grid.loc[(s, layer), "accuracy"] for layer in range(4)] for s in (1, 2)]
    shot = pixels(browser, page.locator("#figure").screenshot())
    assert shot["width"] >= 500 and shot["colours"] > 50 and shot["inked"] > 0.2, shot  # a drawn figure, not a blank frame
    options = page.eval_on_selector("#reading", "s => [...s.options].map(o => o.value)")
    assert options == [f"{m} · {t}" for m in METHODS for t in ("first", "answer")]  # every reading of the run


def test_every_selector_changes_the_figure(opened):
    page = opened.page
    opened.choose("#view", "lines")
    assert {d[0] for d in json.loads(opened.figure())["data"]} == {"scatter"}  # a line by layer per scale
    opened.choose("#view", "compare")
    assert [d[0] for d in json.loads(opened.figure())["data"]] == ["heatmap"] * 3  # A, B and A - B
    opened.choose("#reading-b", "probe · first")
    opened.choose("#view", "heatmap")
    for select in ("#reading", "#breakdown", "#value"):
        values = page.eval_on_selector(select, "s => [...s.options].map(o => o.value)")
        assert len(values) > 1, select
        current = page.eval_on_selector(select, "s => s.value")
        opened.choose(select, next(v for v in reversed(values) if v != current))


def test_hover_shows_the_value_n_interval_and_references(opened, runs):
    opened.choose("#reading", "probe · answer")
    text = opened.point(2, 1)
    row = cells(runs[0], "probe", "answer").loc[(2, 1)]
    for part in (
        "layer 1",
        "digit scale 2",
        f"accuracy {row['accuracy']:.3f}",
        f"n {row['n']}",
        f"95% interval {row['ci_low']:.3f} to {row['ci_high']:.3f}",
        f"chance {row['chance']:.3f}",
        f"control {row['control']:.3f}",
    ):
        assert part in text, (part, text)


def test_clicking_a_cell_lists_its_problems_and_what_the_layer_read(opened, runs):
    page = opened.page
    prompts = {(p["seed"], p["prompt"]): p for p in map(json.loads, (runs[0] / "prompts.jsonl").read_text().splitlines())}
    for method, target, layer in (("probe", "answer", 2), ("logit_lens", "first", 3), ("patch", "answer", 1)):
        opened.choose("#reading", f"{method} · {target}")
        opened.click(2, layer)
        panel = page.locator(f"#panel[data-method='{method}'][data-layer='{layer}']")
        panel.wait_for()
        assert panel.get_attribute("data-scale") == "2"
        expected = examples_of(runs[0], method, target, 2)
        rows = page.locator("#panel tr.example")
        assert [r.get_attribute("data-prompt") for r in rows.all()] == [e["prompt"] for e in expected]
        for e in expected:  # test problems of this scale, as prompts.jsonl has them
            problem = prompts[(e["seed"], e["prompt"])]
            assert (problem["split"], problem["scale"], problem["answer"]) == ("test", 2, e["answer"])
        assert rows.locator("td.read").all_text_contents() == [visible(e["layers"][layer]["read"]) for e in expected]
        ticks = rows.locator("td.ok").count()
        assert ticks / len(expected) == pytest.approx(cells(runs[0], method, target).loc[(2, layer), "accuracy"])  # n = 20: the cell
        if method == "logit_lens":  # the top-5 tokens and the gold token's rank
            first = rows.first.locator("span.position").first
            assert first.locator("span.tok").count() == 5
            assert f"rank {expected[0]['layers'][layer]['tokens'][0]['rank']}" in first.text_content()
        if method == "patch":
            assert f"source {expected[0]['notes']['source']}" in rows.first.locator("td.notes").text_content()
    page.click("#panel-next")  # the next layer of the same problems
    page.locator(f"#panel[data-layer='{layer + 1}']").wait_for()
    expected = examples_of(runs[0], "patch", "answer", 2)
    assert page.locator("#panel tr.example td.read").all_text_contents() == [visible(e["layers"][layer + 1]["read"]) for e in expected]


@pytest.mark.slow
def test_two_runs_side_by_side_show_their_difference(browser, runs, tmp_path, capsys):
    out = tmp_path / "both.html"
    assert main(["report", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    opened = Opened(browser, out)
    page = opened.page
    assert page.locator("#run").is_visible() and page.eval_on_selector("#run", "s => s.options.length") == 2
    opened.choose("#view", "compare")  # run A's first reading against run B's
    assert page.eval_on_selector("#run-b", "s => s.value") == "1"
    assert page.eval_on_selector("#reading-b", "s => s.value") == "logit_lens · first"
    data = json.loads(opened.figure())["data"]
    assert [d[0] for d in data] == ["heatmap"] * 3
    a, b, diff = (pd.DataFrame(d[2]) for d in data)
    pd.testing.assert_frame_equal(diff, a - b)
    expected_a = cells(runs[0], "logit_lens", "first")["accuracy"].unstack().reset_index(drop=True)
    expected_b = cells(runs[1], "logit_lens", "first")["accuracy"].unstack().reset_index(drop=True)
    pd.testing.assert_frame_equal(a, expected_a, check_names=False, check_dtype=False)
    pd.testing.assert_frame_equal(b, expected_b, check_names=False, check_dtype=False)
    opened.choose("#run", "1")  # the header follows the run chosen
    assert page.locator("#provenance .run[data-run='1']").is_visible() and not page.locator("#provenance .run[data-run='0']").is_visible()
    opened.close()


def test_downloads_give_the_grid_and_the_figure(opened, runs, browser):
    page = opened.page
    with page.expect_download() as got:
        page.click("#download-csv")
    assert got.value.suggested_filename == "grid.csv"
    assert open(got.value.path(), encoding="utf-8").read() == (runs[0] / "grid.csv").read_text()
    with page.expect_download() as got:
        page.click("#download-png")
    png = open(got.value.path(), "rb").read()
    assert got.value.suggested_filename.endswith(".png") and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert pixels(browser, png)["colours"] > 50
    with page.expect_download() as got:
        page.click("#download-svg")
    svg = open(got.value.path(), encoding="utf-8").read()
    assert got.value.suggested_filename.endswith(".svg") and svg.startswith("<svg") and "Accuracy Breakdown" in svg


@pytest.mark.slow
def test_a_redrawn_figure_opens_offline_and_draws(browser, runs, tmp_path, capsys):
    out = tmp_path / "probe.html"
    assert main(["plot", str(runs[0]), "--method", "probe", "--target", "answer", "--out", str(out)]) == 0
    assert out.stat().st_size < 2.5e6  # plotly.js compressed inside (4.8 MB as it is)
    opened = Opened(browser, out)
    titles = opened.page.evaluate("() => [...document.querySelectorAll('.figure')].map((d) => d.layout.title.text)")
    assert len(titles) == 1 and titles[0].startswith("Accuracy Breakdown") and opened.page.locator(".figure .main-svg").count() >= 1
    opened.close()
