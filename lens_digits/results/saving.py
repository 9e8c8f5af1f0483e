"""The files of a run directory, written from a grid into a folder (:meth:`AccuracyGrid.save` makes it whole or not at all).

``report.html`` is the run's page (:mod:`lens_digits.results.report`): the one
copy of plotly.js in the folder. ``heatmap.html``, the figure of releases before
0.2 that scripts may still open, is a small page that opens the report.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING

from lens_digits.results.examples import EXAMPLES_FILE, examples_text
from lens_digits.results.page import REPORT_FILE, Report
from lens_digits.results.record import RUN_FORMAT, RUN_SCHEMA

if TYPE_CHECKING:
    from lens_digits.results.grid import AccuracyGrid

__all__ = ["HEATMAP_PAGE", "write_run_files"]

HEATMAP_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="0; url=report.html">
<title>Accuracy Breakdown</title></head>
<body><p>The Accuracy Breakdown of this run is in <a href="report.html">report.html</a>, beside this page (it opens now).</p></body>
</html>
"""
"""``heatmap.html``: it sends the browser to ``report.html`` (kept for scripts that open it; to be removed in 0.3)."""


def write_run_files(grid: "AccuracyGrid", folder: Path) -> None:
    """Write ``grid``'s run directory files into ``folder``.

    ``grid.csv``, ``emergence.csv`` (if the grid has emergence layers), ``prompts.jsonl``, ``examples.jsonl``
    (if it has example readings), ``report.html``, ``heatmap.html`` and ``run.json``.
    """
    grid.table.to_csv(folder / "grid.csv", index=False)
    if not grid.emergence.empty:
        grid.emergence.to_csv(folder / "emergence.csv", index=False)
    with open(folder / "prompts.jsonl", "w", encoding="utf-8") as f:
        for p in grid.problems:
            f.write(json.dumps(p.to_dict()) + "\n")
    if grid.examples:
        (folder / EXAMPLES_FILE).write_text(examples_text(grid.examples), encoding="utf-8")
    label = Path(str((grid.info.get("model") or {}).get("name") or "run")).name or "run"
    (folder / REPORT_FILE).write_text(Report([grid], [label]).html(), encoding="utf-8")
    (folder / "heatmap.html").write_text(HEATMAP_PAGE, encoding="utf-8")
    info = grid.info | {"format": RUN_FORMAT, "schema": RUN_SCHEMA}
    (folder / "run.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
