"""Reading a run directory's files back, trusting nothing in them.

Each reader checks what it reads (columns, types, ranges, one row per cell,
complete layer rows) and raises :class:`~lens_digits.errors.RunDirectoryError`
naming the file and line of the first problem, rather than a pandas or JSON
error, or a grid that silently holds nonsense. Keys this version does not know
(written by a newer one) are skipped with a warning.
"""

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from lens_digits._stack import user_stacklevel
from lens_digits.errors import RunDirectoryError
from lens_digits.problems.tasks import Problem

KEY_COLUMNS = ["method", "target", "scale", "layer"]
CONTRACT_COLUMNS = ["method", "target", "scale", "layer", "accuracy", "n"]
UNIT_COLUMNS = ("accuracy", "ci_low", "ci_high")
"""Columns that hold a fraction from 0 to 1 (a difference grid's accuracy spans -1 to 1)."""


def _where(path: Path, line: int | None = None) -> str:
    return f"{path}" + (f", line {line}" if line is not None else "")


def read_grid_csv(path: Path) -> pd.DataFrame:
    """The tidy table of ``grid.csv``, checked.

    Returns:
        One row per cell (and breakdown label) and layer: ``scale``, ``layer`` and ``n`` as integers,
        the other value columns as numbers, breakdown columns as strings (``all`` for the whole cell).

    Raises:
        RunDirectoryError: Empty or unparsable file, a missing column, a value of
            the wrong type or out of range, a repeated cell, or a cell whose
            layers stop short (a truncated file).
    """
    try:
        if path.stat().st_size == 0:
            raise RunDirectoryError(f"{path} is empty; the run was not written completely, rerun it")
        _check_rows(path)
        table = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"method": str, "target": str})
    except RunDirectoryError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunDirectoryError(f"{path} is not a readable grid table ({first}); rerun the sweep to rewrite it") from None
    missing = [c for c in CONTRACT_COLUMNS if c not in table.columns]
    if missing:
        raise RunDirectoryError(f"{path} lacks column(s) {missing}; a grid table has {CONTRACT_COLUMNS} and more")
    if table.empty:
        raise RunDirectoryError(f"{path} has a header and no cells; rerun the sweep to rewrite it")

    def fail(row: int, text: str) -> None:
        raise RunDirectoryError(f"{_where(path, row + 2)}: {text}")  # line 1 is the header

    for column in ("method", "target"):
        bad = table[column].isna() | (table[column].astype(str).str.strip() == "")
        if bad.any():
            fail(int(bad.idxmax()), f"empty {column!r}")
    for column in ("scale", "layer", "n"):
        values = pd.to_numeric(table[column], errors="coerce")
        low = 1 if column == "scale" else 0
        bad = values.isna() | (values != values.round()) | (values < low)
        if bad.any():
            i = int(bad.idxmax())
            fail(i, f"{column} must be an integer >= {low}, got {table[column].iloc[i]!r}")
        table[column] = values.astype(int)
    difference = table["method"].str.contains(" - ", regex=False)
    numeric = [c for c in table.columns if c not in ("method", "target") and c not in ("scale", "layer", "n")]
    breakdown = []
    for column in numeric:
        values = pd.to_numeric(table[column], errors="coerce")
        labels = table[column].astype(str)
        if column not in CONTRACT_COLUMNS and table[column].notna().any() and (values.isna().all() or (labels == "all").any()):
            breakdown.append(column)  # a label column such as place, or carries (0, 1, 2 and "all")
            table[column] = table[column].fillna("all").astype(str)
            continue
        unparsable = values.isna() & table[column].notna()
        if unparsable.any():
            i = int(unparsable.idxmax())
            fail(i, f"{column} must be a number, got {table[column].iloc[i]!r}")
        if column == "accuracy" and values.isna().any():
            fail(int(values.isna().idxmax()), "accuracy is missing")
        if column in UNIT_COLUMNS:
            lo = pd.Series(0.0, index=table.index).where(~difference | (column != "accuracy"), -1.0)
            bad = values.notna() & ((values < lo - 1e-9) | (values > 1 + 1e-9) | ~values.map(lambda v: math.isfinite(v) or v != v))
            if bad.any():
                i = int(bad.idxmax())
                fail(i, f"{column} must lie between {lo.iloc[i]:g} and 1, got {table[column].iloc[i]!r}")
        table[column] = values
    keys = KEY_COLUMNS + breakdown
    dup = table.duplicated(keys, keep="first")
    if dup.any():
        row = int(dup.idxmax())
        cell = table.loc[row, keys].to_dict()
        first_row = int(table.index[(table[keys] == table.loc[row, keys]).all(axis=1)][0])
        fail(row, f"repeats the cell {cell} of line {first_row + 2}")
    top = int(table["layer"].max())
    for group, rows in table.groupby(["method", "target", "scale", *breakdown], sort=False):
        layers = sorted(rows["layer"].tolist())
        if layers != list(range(top + 1)):
            raise RunDirectoryError(
                f"{path}: cell row {dict(zip(['method', 'target', 'scale', *breakdown], group, strict=True))} has layers "
                f"{_span(layers)} but the grid has layers 0..{top}; the file is incomplete, rerun the sweep to rewrite it"
            )
    return table


def read_emergence_csv(path: Path) -> pd.DataFrame:
    """The emergence layers of ``emergence.csv``, checked (see :mod:`lens_digits.results.emergence`).

    Returns:
        The table, its value columns as numbers and any breakdown columns as strings (``all`` where empty).

    Raises:
        RunDirectoryError: Unparsable, a missing column, or a value that is not a number.
    """
    from lens_digits.results.emergence import EMERGENCE_COLUMNS

    try:
        table = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"method": str, "target": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunDirectoryError(f"{path} is not a readable emergence table ({first}); rerun the sweep to rewrite it") from None
    missing = [c for c in EMERGENCE_COLUMNS if c not in table.columns]
    if missing:
        raise RunDirectoryError(f"{path} lacks column(s) {missing}; an emergence table has {EMERGENCE_COLUMNS}")
    for column in EMERGENCE_COLUMNS[2:]:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() & table[column].notna()
        if bad.any():
            i = int(bad.idxmax())
            raise RunDirectoryError(f"{_where(path, i + 2)}: {column} must be a number, got {table[column].iloc[i]!r}")
        table[column] = values
    for column in table.columns:
        if column not in EMERGENCE_COLUMNS:
            table[column] = table[column].fillna("all").astype(str)
    return table


def _check_rows(path: Path) -> None:
    """Every line has as many fields as the header, and the file ends with a newline (else it was cut short).

    Raises:
        RunDirectoryError: A line has another number of fields than the header, or the last line has no end.
    """
    import csv

    text = path.read_text(encoding="utf-8")
    rows = list(csv.reader(text.splitlines()))
    width = len(rows[0])
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise RunDirectoryError(f"{_where(path, i)}: {len(row)} fields where the header has {width}; the file is truncated or damaged")
    if not text.endswith("\n"):
        raise RunDirectoryError(f"{_where(path, len(rows))}: the last line has no end; the file is truncated, rerun the sweep")


def _span(layers: list[int]) -> str:
    return f"{layers[0]}..{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else str(layers)


def problem_from_dict(d: dict[str, Any], where: str = "a problem") -> tuple[Problem, list[str]]:
    """A :class:`Problem` from a ``prompts.jsonl`` object and the keys it did not know.

    Returns:
        The problem, and the keys of ``d`` that are not fields of :class:`Problem` (skipped).

    Raises:
        RunDirectoryError: A required key is missing, or a value has the wrong type (or the split is not
            ``train``, ``val`` or ``test``); the message starts with ``where``.
    """
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(Problem)}
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
    missing = [k for k in required if k not in d]
    if missing:
        raise RunDirectoryError(f"{where}: missing key(s) {missing}")
    unknown = [k for k in d if k not in fields]
    values = {k: v for k, v in d.items() if k in fields}
    for k in ("scale", "a", "b"):
        if isinstance(values[k], bool) or not isinstance(values[k], int):
            raise RunDirectoryError(f"{where}: {k} must be an integer, got {values[k]!r}")
    for k in ("op", "prompt", "answer", "split"):
        if not isinstance(values[k], str):
            raise RunDirectoryError(f"{where}: {k} must be a string, got {values[k]!r}")
    if values["split"] not in ("train", "val", "test"):
        raise RunDirectoryError(f"{where}: split must be train, val or test, got {values['split']!r}")
    return Problem(**values), unknown


def read_prompts(path: Path) -> list[Problem]:
    """The problems of ``prompts.jsonl``; unknown keys (from a newer version) are skipped with one warning.

    Returns:
        The problems, in file order (blank lines skipped).

    Raises:
        RunDirectoryError: A line is not valid JSON or not a JSON object, or does not describe a problem.
    """
    problems = []
    unknown: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise RunDirectoryError(f"{_where(path, line_no)}: not valid JSON ({e.msg}); the file is damaged") from None
            if not isinstance(d, dict):
                raise RunDirectoryError(f"{_where(path, line_no)}: expected a JSON object, got {type(d).__name__}")
            problem, extra = problem_from_dict(d, _where(path, line_no))
            problems.append(problem)
            for k in extra:
                unknown.setdefault(k, line_no)
    if unknown:
        warnings.warn(
            f"{path}: skipped key(s) this version does not know: {sorted(unknown)} (written by a newer lens-digits?)",
            stacklevel=user_stacklevel(),
        )
    return problems


def read_run_json(path: Path) -> dict[str, Any]:
    """The record of ``run.json`` as a dict (checked to be a JSON object).

    Returns:
        The parsed object, unchecked beyond being a dict (see :meth:`~lens_digits.results.record.RunRecord.from_dict`).

    Raises:
        RunDirectoryError: The file is not UTF-8, not valid JSON, or not a JSON object.
    """
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunDirectoryError(f"{_where(path, e.lineno)}: not valid JSON ({e.msg}); the file is damaged") from None
    except UnicodeDecodeError as e:
        raise RunDirectoryError(f"{path}: not UTF-8 text ({e.reason}); the file is damaged") from None
    if not isinstance(info, dict):
        raise RunDirectoryError(f"{path}: expected a JSON object, got {type(info).__name__}")
    return info
