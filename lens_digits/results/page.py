"""The report: one self-contained HTML page to browse one or more runs' grids, offline.

The page (``report.html`` in a run directory, ``lens-digits report``, or
:meth:`AccuracyGrid.report <lens_digits.results.grid.AccuracyGrid.report>`) shows
each run's provenance, its "Accuracy Breakdown" heatmap with a selector for the
reading (every method and target), the breakdown row and the value column,
emergence markers with their intervals, a hover with ``n``, interval, baseline
and control, an example panel per cell (the example readings of
:mod:`lens_digits.results.examples`), a line view, a side-by-side view of two
readings or runs with their difference, and downloads of the grid (CSV) and the
figure (PNG, SVG).

Nothing in the page knows a method by name: readings, breakdowns and values are
whatever the grid's rows hold. Everything is inside the one file: plotly.js
(the installed plotly's own, gzip-compressed and base64-encoded, unpacked by the
browser's ``DecompressionStream``), the data (compressed the same way) and the
page's script (``assets/report.js``). It makes no network request, so it opens
by double-click, from a mail attachment or a notebook.
"""

import html
import json
import math
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lens_digits.errors import LensDigitsError, OutputError
from lens_digits.results.figures import COLORSCALES, MARKER_COLOUR, MARKERS, TITLE, is_intervention
from lens_digits.results.files import CONTRACT_COLUMNS
from lens_digits.results.offline import packed, plotly_packed
from lens_digits.results.provenance import provenance_html
from lens_digits.results.text import caption

if TYPE_CHECKING:
    from lens_digits.results.grid import AccuracyGrid

__all__ = ["GENERATOR", "REPORT_FILE", "Report", "check_report_path", "is_report"]

REPORT_FILE = "report.html"
GENERATOR = "lens-digits report"
"""The page's ``<meta name="generator">``: how the package recognises a report it wrote (and may replace)."""

REFERENCE_COLUMNS = ("baseline", "chance", "control")
"""Columns the hover shows beside a cell's value: what a layer that reads nothing scores, and a probe's control task."""

_NOT_VALUES = {"scale", "layer", "n", "ci_low", "ci_high", "seed"}


def _assets(name: str) -> str:
    return (resources.files("lens_digits.results") / "assets" / name).read_text(encoding="utf-8")


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return _json_value(v.item())
    return v


def _frame(df: pd.DataFrame) -> dict[str, Any]:
    """A table as ``{"columns": [...], "rows": [[...], ...]}``, missing values as null.

    Returns:
        The columns and rows, JSON-ready.
    """
    frame = df.astype(object).where(df.notna(), None)
    return {"columns": [str(c) for c in df.columns], "rows": [[_json_value(v) for v in row] for row in frame.itertuples(index=False)]}


def _run_data(grid: "AccuracyGrid", label: str) -> dict[str, Any]:
    """What the page needs of one grid: its rows, readings, values, emergence, example readings and its CSV.

    Returns:
        The run's part of the page's data, JSON-ready.
    """
    table = grid.table
    breakdown = grid.breakdown_columns
    numeric = [c for c in table.columns if c not in CONTRACT_COLUMNS[:2] and c not in breakdown and c not in _NOT_VALUES]
    readings = []
    main = grid.main()
    for method, target in dict.fromkeys(zip(table["method"], table["target"], strict=True)):
        rows = main[(main["method"] == method) & (main["target"] == target)]
        acting = is_intervention(method)
        readings.append(
            {
                "method": method,
                "target": target,
                "caption": caption(grid.model_name, grid.info, rows if len(rows) else table[table["method"] == method], "accuracy", {}),
                "accuracy": "flip rate" if acting else "accuracy",
            }
        )
    return {
        "label": label,
        "breakdown": breakdown,
        "values": numeric,
        "references": [c for c in REFERENCE_COLUMNS if c in numeric],
        "readings": readings,
        "table": _frame(table),
        "emergence": _frame(grid.emergence),
        "examples": grid.examples,
        "csv": table.to_csv(index=False),
        "layers": int(table["layer"].max()) if len(table) else 0,
    }


def _labels(grids: Sequence["AccuracyGrid"], labels: Sequence[str] | None) -> list[str]:
    """Names of the runs: those given, else each model's name; repeated names get ``#2``, ``#3``, ...

    Returns:
        One distinct label per grid.

    Raises:
        LensDigitsError: ``labels`` is not one label per grid.
    """
    if labels is not None and len(labels) != len(grids):
        raise LensDigitsError(f"give one label per grid: {len(labels)} labels for {len(grids)} grids")
    names = list(labels) if labels is not None else [g.model_name or "run" for g in grids]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return out


def is_report(path: Path) -> bool:
    """Whether ``path`` is a report this package wrote (its ``<meta name="generator">`` says so).

    Returns:
        True for a regular file whose first few kilobytes carry the marker; False otherwise, or where it cannot be read.
    """
    try:
        if path.is_symlink() or not path.is_file():
            return False
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}'.encode() in head


def check_report_path(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Check that a report can be written at ``path``, writing nothing.

    Returns:
        The path, with ``~`` expanded.

    Raises:
        OutputError: ``path`` does not end in ``.html``, its folder does not exist or is not writable, or a file is
            already there that is not a report of this package (never replaced), or is one and ``overwrite`` is false.
    """
    out = Path(path).expanduser()
    if out.suffix.lower() not in (".html", ".htm"):
        raise OutputError(f"{str(out)!r}: a report is an HTML page; name a file ending in .html")
    if not out.parent.is_dir():
        raise OutputError(f"cannot write {str(out)!r}: the folder {str(out.parent)!r} does not exist; create it or choose another path")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {str(out)!r}: the folder {str(out.parent)!r} is not writable; choose another path")
    if out.exists() or out.is_symlink():
        if not is_report(out):
            raise OutputError(f"{str(out)!r} exists and is not a report written by lens-digits; it is never replaced, choose another path")
        if not overwrite:
            raise OutputError(f"{str(out)!r} exists; choose another path, or replace that report with --overwrite")
    return out


class Report:
    """One page for browsing grids: built from grids (:meth:`AccuracyGrid.report`) or run folders (:func:`.load_report`).

    >>> import lens_digits as ld
    >>> grid = ld.run_sweep(ld.testing.tiny_model(), scales=[1], n_per_scale=10, target="first")
    >>> page = grid.report().html()
    >>> page.startswith("<!DOCTYPE html>") and "://" not in page  # no address of any server: everything is inside
    True
    """

    def __init__(self, grids: Sequence["AccuracyGrid"], labels: Sequence[str] | None = None, title: str | None = None) -> None:
        """The page of ``grids`` (one, or several to compare), named by ``labels`` (default: their models' names).

        Raises:
            LensDigitsError: No grid is given, or not one label per grid.
        """
        if not grids:
            raise LensDigitsError("a report needs at least one grid")
        self.grids = list(grids)
        self.labels = _labels(self.grids, labels)
        self.title = title or " · ".join(self.labels)

    def data(self) -> dict[str, Any]:
        """What the page's script gets: every run's data, and the figure style the package's figures use.

        Returns:
            The data, JSON-ready.
        """
        return {
            "title": TITLE,
            "runs": [_run_data(g, label) for g, label in zip(self.grids, self.labels, strict=True)],
            "style": {"colorscale": COLORSCALES[0], "marker": MARKER_COLOUR, "symbols": [MARKERS[k] for k in sorted(MARKERS)]},
        }

    def html(self) -> str:
        """The page: one HTML document with everything it needs inside.

        Returns:
            The document's text.
        """
        from lens_digits import __version__

        headers = "".join(
            f'<section class="run" data-run="{i}"{"" if i == 0 else " hidden"}>'
            f"<h2>{html.escape(label)}</h2>{provenance_html(g.info)}</section>"
            for i, (g, label) in enumerate(zip(self.grids, self.labels, strict=True))
        )
        data = json.dumps(self.data(), separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")
        values = {
            "GENERATOR": f"{GENERATOR} {__version__}",
            "TITLE": html.escape(f"{TITLE} · {self.title}"),
            "HEADING": html.escape(self.title),
            "PROVENANCE": headers,
            "VERSION": html.escape(__version__),
            "STYLE": _assets("report.css"),
            "PLOTLY": plotly_packed(),
            "DATA": packed(data),
            "SCRIPT": _assets("report.js"),
        }
        # one pass over the template: nothing inserted is read again for placeholders
        return re.sub(r"\{\{([A-Z]+)\}\}", lambda m: values[m.group(1)], _assets("report.html"))

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write the page to ``path`` (a ``.html`` file) whole or not at all.

        Args:
            path: The file to write.
            overwrite: Replace a report this package wrote there; a file it did not write is never replaced.

        Returns:
            The path written.

        Raises:
            OutputError: ``path`` does not end in ``.html``, its folder does not exist, or a file is already there
                (not a report of this package, or ``overwrite`` is not given).
        """
        from lens_digits.storage import atomic

        out = check_report_path(path, overwrite)
        atomic.write_file(out, self.html().encode("utf-8"))
        return out

    def _repr_html_(self) -> str:
        """The page inline in a notebook, in a frame of its own (it works offline there too).

        Returns:
            An ``iframe`` whose ``srcdoc`` is the page.
        """
        return f'<iframe srcdoc="{html.escape(self.html(), quote=True)}" style="width:100%;height:980px;border:0"></iframe>'
