"""The report: one self-contained HTML page to browse runs, and how run directories and study folders become one.

A run directory's ``report.html`` is written with the run. :func:`load_report`
builds the page of any run directories (to compare runs: several models, templates
or seeds) or of a study folder (every model x task unit), as
``lens-digits report RUN_DIR [RUN_DIR ...]`` does; :meth:`AccuracyGrid.report
<lens_digits.results.grid.AccuracyGrid.report>` builds it from grids in Python.

What the page shows, and how it stays one file that opens offline, is described
in :mod:`lens_digits.results.page`.
"""

import json
import os
from pathlib import Path
from typing import Any

from lens_digits.errors import RunDirectoryError
from lens_digits.results.grid import AccuracyGrid
from lens_digits.results.page import GENERATOR, REPORT_FILE, Report, is_report

__all__ = ["GENERATOR", "REPORT_FILE", "Report", "is_report", "load_report", "study_units"]

STUDY_FORMAT = "lens_digits.study"
"""The ``format`` of a ``study.json`` (:data:`lens_digits.runs.study_file.STUDY_FORMAT`, which this stage cannot import)."""


def study_units(folder: Path) -> list[tuple[Path, str]] | None:
    """The unit run directories of a study folder, with labels ``MODEL · TASK``; None if ``folder`` holds no study.

    Returns:
        ``(run directory, label)`` per unit that ``study.json`` lists, in its order; None where the folder has no
        ``study.json`` of this package.

    Raises:
        RunDirectoryError: ``study.json`` is damaged, or lists no unit.
    """
    path = folder / "study.json"
    if not path.is_file():
        return None
    try:
        record: Any = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise RunDirectoryError(f"{path}: not valid JSON ({e}); the study's record is damaged, run the study again") from None
    if not isinstance(record, dict) or record.get("format") != STUDY_FORMAT:
        return None
    units = record.get("units") or []
    if not units:
        raise RunDirectoryError(f"{path} lists no finished unit; run the study (lens-digits study) first")
    out = []
    for unit in units:
        model = (unit.get("model") or {}).get("name", "?") if isinstance(unit.get("model"), dict) else str(unit.get("model"))
        out.append((folder / str(unit["out"]), f"{model} · {unit.get('task_name', unit['out'])}"))
    return out


def load_report(*folders: str | os.PathLike[str], labels: list[str] | None = None, title: str | None = None) -> Report:
    """The report of run directories and study folders (a study's units each count as a run).

    Args:
        *folders: Run directories (written by ``lens-digits run`` or :meth:`AccuracyGrid.save`) and study folders.
        labels: Names of the runs in the page (default: each run directory's folder name, or a study unit's
            ``MODEL · TASK``).
        title: The page's heading (default: the labels).

    Returns:
        The report; ``save(path)`` writes it.

    Raises:
        RunDirectoryError: A folder does not exist, or is neither a run directory nor a study folder, or one of its
            files is damaged (the message names the file).
    """
    if not folders:
        raise RunDirectoryError("name at least one run directory or study folder")
    grids: list[AccuracyGrid] = []
    names: list[str] = []
    for given in folders:
        folder = Path(given).expanduser()
        if not folder.is_dir():
            raise RunDirectoryError(f"{str(folder)!r} does not exist or is not a folder; name a run directory written by lens-digits run")
        units = study_units(folder)
        if units is None:
            if not (folder / "grid.csv").is_file():
                raise RunDirectoryError(
                    f"{str(folder)!r} is not a run directory (it has no grid.csv) nor a study folder (no study.json); "
                    "name a folder written by lens-digits run or lens-digits study"
                )
            units = [(folder, folder.resolve().name or str(folder))]
        for run_dir, label in units:
            grids.append(AccuracyGrid.load(run_dir))
            names.append(label)
    return Report(grids, labels if labels is not None else names, title)
