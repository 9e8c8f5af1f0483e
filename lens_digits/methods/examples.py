"""Example readings: what a method read for a few test problems at every layer column, shown by the report's example panel.

A sweep picks, per digit scale, a fixed sample of the test problems that a
method's cells count (:func:`example_rows`: at most :data:`N_EXAMPLES`, drawn
with the seed) and asks the method what it read for them
(:meth:`~lens_digits.methods.base.Method.examples`). Each :class:`Example`
holds one problem's readings, one per layer column, each a JSON-ready dict whose
keys are all optional:

- ``read``: what the layer gave, as text (a lens: its top-1 tokens at the answer
  positions, joined; a probe: the digits it predicts; patching: the patched
  model's answer);
- ``ok``: whether the cell counted it right;
- ``tokens``: per answer position, ``{"gold": token, "rank": the gold token's
  rank (0 = top-1), "top": [[token, probability], ...]}`` (the lenses' top
  :data:`TOP_K`);
- ``note``: a word on the outcome (patching: ``flip``, ``keep`` or ``neither``).

A method that has nothing to show returns None from the hook, and the report
says so. The sample depends on the test problems and the seed alone, so every
method of a run shows the same problems wherever its cells count them.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lens_digits.problems.tasks import Problem

if TYPE_CHECKING:
    from lens_digits.methods.scores import Scores

__all__ = ["N_EXAMPLES", "TOP_K", "Example", "breakdown_keys", "example_rows", "probability"]

N_EXAMPLES = 20
"""Example problems per digit scale (and problem draw) that a sweep keeps readings of."""

TOP_K = 5
"""Candidate tokens a lens's example reading lists per answer position."""


@dataclass
class Example:
    """What a method read for one problem at every layer column.

    Attributes:
        problem: The test problem.
        gold: What the target asks for, as text (the answer, its first token, the model's own answer, or for
            patching the source's answer).
        layers: One reading per layer column (see the module docstring for its keys).
        notes: Words about the problem as a whole, by name (patching: ``source``, its source problem's prompt).
        rows: The breakdown rows whose cells count the problem, as ``column=label`` keys (``"carries=1"``;
            nested rows joined by ``|`` in column order: ``"carry_in=yes|place=units"``); filled in by the sweep.
    """

    problem: Problem
    gold: str
    layers: list[dict[str, Any]]
    notes: dict[str, str] = field(default_factory=dict)
    rows: list[str] = field(default_factory=list)


def example_rows(problems: Sequence[Problem], seed: int, applies: Sequence[bool] | None = None, n: int = N_EXAMPLES) -> list[int]:
    """A fixed sample of the problems, per digit scale: at most ``n`` of those that ``applies`` marks (all when None).

    Each scale draws from its own stream seeded by ``(seed, scale)``, so a scale's sample does not depend on the
    other scales, and the same problems and seed give the same sample.

    Returns:
        Indices into ``problems``, ascending.

    >>> ps = [Problem(1 + i % 2, "add", i, 1, f"{i}+1=", str(i + 1), "test") for i in range(10)]
    >>> rows = example_rows(ps, seed=0, n=2)
    >>> len(rows), sorted({ps[i].scale for i in rows}), rows == example_rows(ps, seed=0, n=2)
    (4, [1, 2], True)
    """
    keep = [True] * len(problems) if applies is None else [bool(a) for a in applies]
    chosen: list[int] = []
    for scale in sorted({p.scale for p in problems}):
        pool = [i for i, p in enumerate(problems) if p.scale == scale and keep[i]]
        order = np.random.default_rng([seed, scale]).permutation(len(pool))
        chosen += [pool[k] for k in order[:n]]
    return sorted(chosen)


def breakdown_keys(scores: "Scores", row: int, prefix: tuple[tuple[str, str], ...] = ()) -> list[str]:
    """The breakdown rows of ``scores`` that count problem ``row`` (see :attr:`Example.rows`).

    Returns:
        Their keys, ``column=label`` pairs sorted by column and joined by ``|``, in the order the breakdown lists them.
    """
    keys = []
    for column, labels in scores.breakdown.items():
        for label, sub in labels.items():
            if sub.applies is not None and not bool(sub.applies[row]):
                continue
            pairs = (*prefix, (column, label))
            keys.append("|".join(f"{c}={v}" for c, v in sorted(pairs)))
            keys += breakdown_keys(sub, row, pairs)
    return keys


def probability(p: float) -> float:
    """A probability kept to three significant digits (what an example reading shows).

    Returns:
        ``p`` rounded to three significant digits; 0 and non-finite values as 0.

    >>> probability(0.123456), probability(1.23456e-7)
    (0.123, 1.23e-07)
    """
    if not math.isfinite(p) or p <= 0:
        return 0.0
    return float(f"{p:.3g}")
