"""Emergence layers: the first layer at which a cell's accuracy reaches a threshold, with a bootstrap interval.

For each method, target, digit scale (and breakdown row), the emergence layer
at threshold ``t`` is the first layer whose accuracy over the cell's problems is
at least ``t`` (none: never reached). Its 95% interval comes from a bootstrap
over problems: the problems are resampled with replacement ``n_boot`` times,
the emergence layer is found on each resample, and the interval is the 2.5th
and 97.5th percentiles of those layers (a resample that never reaches ``t``
counts as later than every layer, so an upper end past the last layer reads
"never"). ``reached`` is the share of resamples that reach ``t`` at all.

The resampling weights for ``n`` problems are drawn from a generator seeded with
the sweep's seed and ``n``, so the same grid gives the same intervals, and a
cell's interval does not depend on the other cells of the grid.
"""

import math
from collections.abc import Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from lens_digits.errors import LensDigitsError

THRESHOLDS = (0.5, 0.9)
N_BOOT = 1000
EMERGENCE_COLUMNS = ["method", "target", "scale", "threshold", "layer", "ci_low", "ci_high", "reached", "n"]


def check_thresholds(thresholds: Sequence[float] | str) -> tuple[float, ...]:
    """Thresholds in (0, 1], sorted, from a list or a string such as ``"0.5,0.9"``.

    Returns:
        The distinct thresholds, in increasing order.

    Raises:
        LensDigitsError: A threshold is not a number in (0, 1], or there is none.
    """
    from lens_digits.settings import _float_list

    return _float_list("thresholds", thresholds)


def first_layer(accuracy: Float[Tensor, "*batch layer"], threshold: float) -> Float[Tensor, " *batch"]:
    """Index of the first layer with ``accuracy >= threshold``; ``inf`` where none is.

    Returns:
        Per batch entry, the first layer reaching ``threshold`` as a float, or ``inf``.

    >>> first_layer(torch.tensor([[0.1, 0.6, 0.4, 0.95], [0.2, 0.3, 0.4, 0.45]]), 0.5).tolist()
    [1.0, inf]
    """
    reached = accuracy >= threshold - 1e-9  # a cell at exactly the threshold reaches it despite float sums
    layer = reached.float().argmax(-1).float()
    return torch.where(reached.any(-1), layer, torch.full_like(layer, math.inf))


class Bootstrap:
    """Resampling weights over problems, one set per sample size, each from a generator seeded with the seed and the size.

    So a cell's interval does not depend on which other cells were resampled
    before it: a method added to a grid later (``lens-digits fit``) gets the
    intervals it would have had in the first run.
    """

    def __init__(self, n_boot: int = N_BOOT, seed: int = 0) -> None:
        """``n_boot`` resamples; ``seed`` makes them reproducible.

        Raises:
            LensDigitsError: ``n_boot`` is not a positive integer.
        """
        if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
            raise LensDigitsError(f"n_boot must be a positive integer, got {n_boot!r}")
        self.n_boot = n_boot
        self.seed = int(seed)
        self._weights: dict[int, Tensor] = {}

    def weights(self, n: int) -> Float[Tensor, "boot problem"]:
        """How often each of ``n`` problems is drawn in each resample (rows sum to ``n``).

        Returns:
            Counts of shape ``(n_boot, n)``, cached per ``n``.
        """
        if n not in self._weights:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + n) % (1 << 63))
            idx = torch.randint(n, (self.n_boot, n), generator=generator)
            self._weights[n] = torch.zeros(self.n_boot, n).scatter_add_(1, idx, torch.ones(self.n_boot, n))
        return self._weights[n]

    def emergence(self, correct: Bool[Tensor, "problem layer"], thresholds: Sequence[float]) -> list[dict[str, float]]:
        """Emergence layer, 95% interval and share of resamples reaching it, per threshold.

        Returns:
            One dict per threshold with ``threshold``, ``layer``, ``ci_low``, ``ci_high`` (NaN: never
            reached), ``reached`` (share of resamples reaching it) and ``n`` (number of problems).
        """
        n = correct.shape[0]
        c = correct.float()
        accuracy = c.mean(0)
        resampled = self.weights(n) @ c / n  # (boot, layer)
        out = []
        for t in thresholds:
            boot = first_layer(resampled, t)
            lo, hi = torch.quantile(boot.double().clamp(max=1e9), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
            point = float(first_layer(accuracy, t))
            out.append(
                {
                    "threshold": float(t),
                    "layer": point if math.isfinite(point) else math.nan,
                    "ci_low": lo if lo < 1e9 else math.nan,
                    "ci_high": hi if hi < 1e9 else math.nan,
                    "reached": float(torch.isfinite(boot).float().mean()),
                    "n": n,
                }
            )
        return out


EMERGENCE_LEGEND = (
    "Emergence layers: the first layer whose accuracy reaches each threshold, [its bootstrap 95% interval]. "
    "'3 [2-4]': layer 3, between 2 and 4 in 95% of resamples; '5 [4-never]': some resamples never reach it; "
    "'never': the accuracy never reaches it."
)
"""The one-line legend printed above :func:`emergence_text`'s table."""


def emergence_text(table: pd.DataFrame, breakdown: bool = False) -> str:
    """The emergence table as text: one row per method, target and scale, a column per threshold.

    Each entry reads ``3 [2-4]`` (layer and 95% interval), ``5 [4-never]`` when
    some resamples never reach the threshold, or ``never``. With several problem
    draws (a ``seed`` column), ``seeds 2-3`` gives the range of the draws' own layers.

    Returns:
        The table as a string, empty when ``table`` is.
    """
    if table.empty:
        return ""
    label_columns = [c for c in table.columns if c not in EMERGENCE_COLUMNS]
    df = table
    if not breakdown:
        for c in label_columns:
            if c != "seed":
                df = df[df[c] == "all"]
    seeds = df[df["seed"] != "all"] if "seed" in df.columns else None
    if seeds is not None:
        df = df[df["seed"] == "all"]

    def show(x: float) -> str:
        return "never" if not math.isfinite(x) else f"{x:.0f}"

    rows = []
    keys = ["method", "target", "scale"] + ([c for c in label_columns if c != "seed"] if breakdown else [])
    for key, cell in df.groupby(keys, sort=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        for r in cell.itertuples():
            entry = f"{show(r.layer)} [{show(r.ci_low)}-{show(r.ci_high)}]"
            if seeds is not None:
                match = seeds
                for k in keys:
                    match = match[match[k] == row[k]]
                per_seed = match.loc[match["threshold"] == r.threshold, "layer"]
                if len(per_seed):
                    lo, hi = per_seed.min(), per_seed.max()
                    entry += f", seeds {show(lo)}" + ("" if lo == hi or (math.isnan(lo) and math.isnan(hi)) else f"-{show(hi)}")
            row[f"acc >= {r.threshold:g}"] = entry
        rows.append(row)
    return pd.DataFrame(rows).to_string(index=False)
