"""A real browser for the tests of the report page: the system's Chromium (or Chrome) driven by Playwright.

No browser is ever downloaded: the tests use the Chromium on this machine (``chromium``,
``chromium-browser``, ``google-chrome`` or ``google-chrome-stable`` on ``PATH``, or the file named by
``LENS_DIGITS_CHROMIUM``). Where none is found, or Playwright is not installed, or the browser does not
start, the tests skip and say why; with ``LENS_DIGITS_REQUIRE_BROWSER=1`` (``.ci/run`` sets it when the
machine has Chromium) they fail instead, so CI cannot pass with every browser test skipped.
"""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REQUIRE = "LENS_DIGITS_REQUIRE_BROWSER"
CHROMIUM = "LENS_DIGITS_CHROMIUM"
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The browser to drive: ``$LENS_DIGITS_CHROMIUM`` if set (and a file), else the first of :data:`NAMES` on PATH."""
    given = os.environ.get(CHROMIUM)
    if given:
        return given if Path(given).is_file() else None
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def no_browser(reason: str) -> None:
    """Skip the test with ``reason``, or fail it where a browser is required."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason}; {REQUIRE}=1 (set by .ci/run on a machine with Chromium) makes the browser tests required")
    pytest.skip(reason)


@contextmanager
def chromium() -> Iterator:
    """A Playwright ``Browser`` on the system's Chromium, closed on exit (or a skip or failure saying why there is none)."""
    path = find_chromium()
    if path is None:
        no_browser(f"no Chromium or Chrome found (looked for {', '.join(NAMES)} on PATH and ${CHROMIUM})")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        no_browser("Playwright is not installed (pip install -e '.[test]'; no browser download is needed)")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=path)
        except Error as e:
            no_browser(f"{path} did not start under Playwright: {str(e).strip().splitlines()[0]}")
        try:
            yield browser
        finally:
            browser.close()


PIXELS = """async (b64) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const image = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
  const canvas = new OffscreenCanvas(image.width, image.height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0);
  const px = ctx.getImageData(0, 0, image.width, image.height).data;
  const colours = new Set();
  let inked = 0;
  for (let i = 0; i < px.length; i += 4) {
    colours.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
    if (px[i] + px[i + 1] + px[i + 2] < 600) inked++;
  }
  return { width: image.width, height: image.height, colours: colours.size, inked: inked / (px.length / 4) };
}"""
"""Decodes a PNG in a blank page of the browser: its size, distinct colours and the share of pixels that are not near white."""


def pixels(browser, png: bytes) -> dict:
    """What a PNG holds (see :data:`PIXELS`), decoded in a fresh page that has nothing loaded."""
    import base64

    page = browser.new_page()
    try:
        return page.evaluate(PIXELS, base64.b64encode(png).decode("ascii"))
    finally:
        page.close()
