"""Every kind of figure, rendered to PNG by the script that draws docs/gallery, and looked at in a browser."""

import base64
import os
import subprocess
import sys

import pytest
from browser import PIXELS, chromium, no_browser
from conftest import REPO

KINDS = {p.stem for p in (REPO / "docs" / "gallery").glob("*.png")}


@pytest.mark.slow
def test_the_gallery_script_renders_every_figure_kind_as_a_picture(tmp_path):
    assert len(KINDS) >= 12  # heatmap, text, lines, panels, facets, difference, selectivity, patching, compare, study, ...
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "figure_gallery.py"), "--out", str(tmp_path), "--n", "20"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if done.returncode != 0 and "static image export is unavailable" in done.stderr:
        no_browser(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p.stem for p in tmp_path.glob("*.png")} == KINDS  # the committed gallery is what the script draws
    with chromium() as browser:
        page = browser.new_page()
        for name in sorted(KINDS):
            png = (tmp_path / f"{name}.png").read_bytes()
            seen = page.evaluate(PIXELS, base64.b64encode(png).decode())
            assert seen["width"] >= 600 and seen["height"] >= 300, (name, seen)
            assert seen["colours"] > 50 and 0.01 < seen["inked"] < 0.9, (name, seen)  # drawn: cells, text, axes
