"""plotly.js inside a page, once and compressed: how every HTML file of this package opens offline.

plotly.js is 4.8 MB. A page of this package holds it once (however many figures
it draws), gzip-compressed and base64-encoded (about 2.0 MB), in a
``<script type="application/octet-stream">`` element that the browser unpacks
with ``DecompressionStream`` before drawing. No CDN (a page must open offline)
and no ``plotly.min.js`` beside the pages (a page that needs a second file
breaks when it is sent or opened alone). :mod:`lens_digits.results.page` builds
the report this way; :func:`figure_page` does it for figures (``lens-digits
plot``, ``compare``, a study's ``study.html``).
"""

import base64
import functools
import gzip
import html
from typing import Any

__all__ = ["UNPACK", "figure_page", "packed", "plotly_packed"]


def packed(data: bytes) -> str:
    """``data`` gzip-compressed (no time stamp, so the same input gives the same page) and base64-encoded.

    Returns:
        The base64 text.
    """
    return base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode("ascii")


@functools.lru_cache(maxsize=1)
def plotly_packed() -> str:
    """The installed plotly's plotly.js, :func:`packed` (once per process).

    Returns:
        The base64 text of the compressed library.
    """
    from plotly.offline import get_plotlyjs

    return packed(get_plotlyjs().encode("utf-8"))


UNPACK = """async function ldUnpack(id) {
  const text = document.getElementById(id).textContent.trim();
  let bytes;
  if (Uint8Array.fromBase64) bytes = Uint8Array.fromBase64(text);
  else {
    const bin = atob(text);
    bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  }
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Response(stream).text();
}
async function ldPlotly() {
  const script = document.createElement("script");
  script.textContent = await ldUnpack("ld-plotly");
  document.head.appendChild(script);
}"""
"""The page's script that unpacks what :func:`packed` packed (``ldUnpack(id)``) and loads plotly.js (``ldPlotly()``)."""

_FIGURE_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>body {{ margin: 16px; font: 14px system-ui, sans-serif; }} .figure {{ margin-bottom: 24px; }}</style>
</head>
<body>
<p id="status">Drawing the figure&hellip; (it needs JavaScript, and a browser from 2023 or later)</p>
{divs}
<script type="application/octet-stream" id="ld-plotly">{plotly}</script>
{figures}
<script>
{unpack}
(async () => {{
  await ldPlotly();
  for (const holder of document.querySelectorAll("script[data-figure]")) {{
    const fig = JSON.parse(holder.textContent);
    await Plotly.newPlot(holder.dataset.figure, fig.data, fig.layout, {{ displaylogo: false, responsive: true }});
  }}
  document.getElementById("status").remove();
  document.body.dataset.ready = "1";
}})();
</script>
</body>
</html>
"""


def figure_page(*figures: Any, title: str = "Accuracy Breakdown") -> str:
    """One HTML page that draws plotly ``figures`` offline, with one compressed copy of plotly.js.

    Each figure's JSON stays readable in the page (``<`` escaped); the page needs a browser with
    ``DecompressionStream`` (Chrome and Edge 80, Firefox 113, Safari 16.4 or later).

    Returns:
        The document's text.

    >>> import plotly.graph_objects as go
    >>> page = figure_page(go.Figure(go.Heatmap(z=[[0, 1]])))
    >>> page.count('id="ld-plotly"'), "://" in page
    (1, False)
    """
    import plotly.io as pio

    divs = "\n".join(f'<div id="figure-{i}" class="figure"></div>' for i in range(len(figures)))
    texts = [pio.to_json(fig, validate=False).replace("<", "\\u003c") for fig in figures]  # no "</script>" inside
    data = "\n".join(f'<script type="application/json" data-figure="figure-{i}">{text}</script>' for i, text in enumerate(texts))
    return _FIGURE_PAGE.format(title=html.escape(title), divs=divs, plotly=plotly_packed(), figures=data, unpack=UNPACK)
