"""The cells of a grid: per-problem scores aggregated per method, target, digit scale, layer and breakdown label.

Each cell gets its accuracy, ``n``, a 95% Wilson interval and the mean of each
metric; emergence layers are found per cell row on the way. Floats are kept to
six significant digits, so that float noise does not reach ``grid.csv``.
"""

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from lens_digits.errors import NonFiniteError
from lens_digits.methods.scores import Scores
from lens_digits.results.emergence import Bootstrap


def wilson_interval(k: int | float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for ``k`` successes in ``n`` trials.

    Returns:
        ``(low, high)``, clipped to [0, 1]; ``(nan, nan)`` if ``n`` is 0.

    >>> [round(x, 3) for x in wilson_interval(5, 10)]
    [0.237, 0.763]
    """
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def cell_rows(
    method: str,
    target: str,
    scores: Scores,
    scales: torch.Tensor,
    extra: dict[str, str],
    emergence: "tuple[Bootstrap, tuple[float, ...], list[dict[str, Any]]] | None" = None,
) -> list[dict[str, Any]]:
    """Cells of one method and target (breakdown rows included); emergence rows go to ``emergence[2]``.

    Returns:
        One row per digit scale, layer and breakdown label: the cell's keys, accuracy, ``n``, interval and mean metrics.

    Raises:
        NonFiniteError: A metric of :data:`ALWAYS_DEFINED` is NaN or infinite for a problem of a scale.
    """
    rows = []
    correct = scores.correct.float().cpu()
    metrics = {k: v.double().cpu() for k, v in scores.metrics.items()}
    applies = torch.ones_like(scales, dtype=torch.bool) if scores.applies is None else scores.applies.cpu()
    for scale in sorted(set(scales.tolist())):
        sel = (scales == scale) & applies
        n = int(sel.sum())
        if n == 0:
            continue
        acc = correct[sel].mean(0)
        means = {k: v[sel].nanmean(0) for k, v in metrics.items()}  # NaN: undefined for a problem (abs_error of a non-number)
        for name in ALWAYS_DEFINED:
            if name in metrics and not bool(torch.isfinite(metrics[name][sel]).all()):
                raise NonFiniteError(f"{method} (target {target}) scored a NaN or infinite {name} at digit scale {scale}; it is not saved")
        for layer in range(correct.shape[1]):
            k = float(correct[sel, layer].sum())
            lo, hi = wilson_interval(k, n)
            row = {"method": method, "target": target, "scale": int(scale), "layer": layer}
            row |= {"accuracy": float(acc[layer]), "n": n, "ci_low": lo, "ci_high": hi}
            row |= extra | {k: float(v[layer]) for k, v in means.items()}
            rows.append(row)
        if emergence is not None:
            boot, thresholds, out = emergence
            for e in boot.emergence(scores.correct.cpu()[sel], thresholds):
                out.append({"method": method, "target": target, "scale": int(scale)} | e | extra)
    for column, labelled in scores.breakdown.items():
        for label, sub in labelled.items():
            rows += cell_rows(method, target, sub, scales, extra | {column: label}, emergence)
    return rows


ALWAYS_DEFINED = ("gold_rank", "gold_prob")
"""Metrics defined for every problem and layer: a NaN there is an error, never a cell."""


ALL = "all"
"""The breakdown label of a row that covers every value of that breakdown."""


def fill_breakdown_labels(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Label ``ALL`` where a row has no label in a breakdown column, in place (and returned).

    ``columns`` None: every text column but ``method`` and ``target`` (tables put
    together from grids with different breakdowns).

    Returns:
        ``frame``, filled.
    """
    if columns is None:
        columns = [c for c in frame.columns if c not in ("method", "target") and not pd.api.types.is_numeric_dtype(frame[c])]
    for c in columns:
        if c in frame.columns:
            frame[c] = frame[c].fillna(ALL)
    return frame


def breakdown_columns(scores: Scores) -> list[str]:
    """Breakdown columns of ``scores`` and of its breakdown rows, nested ones included (``place``, then ``carry_in``).

    Returns:
        The column names, each once, outer ones first.
    """
    out = list(scores.breakdown)
    for labelled in scores.breakdown.values():
        for sub in labelled.values():
            out += breakdown_columns(sub)
    return list(dict.fromkeys(out))


SIGNIFICANT_DIGITS = 6


def rounded(table: pd.DataFrame) -> pd.DataFrame:
    """Floats to 6 significant digits, so that float noise (batch size, threads) does not reach ``grid.csv``.

    Returns:
        A copy of ``table`` with its finite floats rounded.
    """
    table = table.copy()
    for column in table.columns:
        if pd.api.types.is_float_dtype(table[column]):
            table[column] = table[column].map(lambda x: float(f"{x:.{SIGNIFICANT_DIGITS}g}") if math.isfinite(x) else x)
    return table
