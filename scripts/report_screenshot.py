"""The README's screenshot of a report (docs/report_builtin.png): the quick start's run, one cell clicked.

    python scripts/report_screenshot.py            # runs the quick start into a temporary folder, then shoots its page

Needs Playwright (the ``test`` extra) and a Chromium or Chrome on PATH; no browser is downloaded.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
CELL = """([scale, layer]) => {
  const gd = document.getElementById("figure");
  const fl = gd._fullLayout;
  const box = gd.getBoundingClientRect();
  const row = fl.yaxis._categories.indexOf(String(scale));
  return [box.left + fl._size.l + fl.xaxis.l2p(layer), box.top + fl._size.t + fl.yaxis.l2p(row)];
}"""
"""Where the heatmap's cell (scale, layer) is in the window (the report's browser tests use it too)."""


def main() -> int:
    """Run the quick start, open its report in Chromium, click a cell and save the page as a PNG.

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DOCS / "report_builtin.png"))
    parser.add_argument("--cell", default="3,25", help="digit scale and layer of the cell to click")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    browser_path = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if browser_path is None:
        sys.exit("no Chromium or Chrome on PATH")
    scale, layer = (int(x) for x in args.cell.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "demo"
        command = ["lens-digits", "run", "--scales", "1-4", "--n", "200", "--out", str(run), "--no-progress"]
        subprocess.run(command, check=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto((run / "report.html").as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.locator("#figure").scroll_into_view_if_needed()
            x, y = page.evaluate(CELL, [scale, layer])
            page.mouse.move(x, y)
            page.wait_for_timeout(500)
            page.mouse.down()
            page.mouse.up()
            page.mouse.move(5, 5)  # no hover label over the picture
            page.wait_for_timeout(800)
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
