"""What a method found, per test problem and layer column: :class:`Scores`, and the carry breakdown every method gets.

A method's :class:`Scores` become the grid's cells (:mod:`lens_digits.results.grid`):
``correct`` their accuracy, each metric a mean column, each breakdown label rows of
its own. :func:`add_column_breakdown` adds rows by the number of carries (or borrows)
and, under each digit place, by whether that place receives one, whatever the method.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from lens_digits.methods.examples import Example
from lens_digits.problems.carries import COLUMN_NAMES, column_rule, incoming
from lens_digits.problems.digits import place_index
from lens_digits.problems.tasks import Problem

Target = Literal["first", "answer", "model"]


@dataclass
class Scores:
    """What a decoder found, per test problem and layer.

    Attributes:
        correct: Whether the decoder read the target right.
        metrics: Extra per-problem numbers; each becomes a column of the grid
            holding its mean over the cell's problems (for example ``gold_rank``).
        breakdown: Finer scores, as ``{column: {label: Scores}}``; each label
            becomes rows of the grid with ``column`` set to ``label`` (the
            probes' digit ``place``). The main rows have ``column`` = ``"all"``.
        applies: Problems these scores are about (None: all). Cells count only
            those, and a scale with none gets no rows (a 2-digit sum has no
            thousands place).
        examples: What the method read for a sample of the problems (see
            :mod:`lens_digits.methods.examples`); a sweep fills it in after scoring.
    """

    correct: Bool[Tensor, "problem layer"]
    metrics: dict[str, Float[Tensor, "problem layer"]] = field(default_factory=dict)
    breakdown: dict[str, dict[str, "Scores"]] = field(default_factory=dict)
    applies: Bool[Tensor, " problem"] | None = None
    examples: list[Example] = field(default_factory=list)

    def __len__(self) -> int:
        """Number of problems.

        Returns:
            The length of the problem axis of ``correct``.
        """
        return self.correct.shape[0]

    @classmethod
    def concat(cls, parts: "list[Scores]") -> "Scores":
        """The scores of several problem sets, one after another (for example several seeds' draws).

        A metric or breakdown row that some parts lack is NaN, or does not apply,
        on those parts' problems.

        Returns:
            Scores over the problems of every part, in order, on the CPU.
        """
        import torch

        def nan_like(p: "Scores") -> Tensor:
            return torch.full(p.correct.shape, float("nan"))

        correct = torch.cat([p.correct.cpu() for p in parts])
        names = list(dict.fromkeys(k for p in parts for k in p.metrics))
        metrics = {k: torch.cat([p.metrics[k].double().cpu() if k in p.metrics else nan_like(p).double() for p in parts]) for k in names}
        applies = None
        if any(p.applies is not None for p in parts):
            applies = torch.cat([p.applies.cpu() if p.applies is not None else torch.ones(len(p), dtype=torch.bool) for p in parts])
        breakdown: dict[str, dict[str, Scores]] = {}
        for column in dict.fromkeys(c for p in parts for c in p.breakdown):
            labels = dict.fromkeys(label for p in parts for label in p.breakdown.get(column, {}))
            breakdown[column] = {
                label: cls.concat([p.breakdown.get(column, {}).get(label) or cls._absent(p) for p in parts]) for label in labels
            }
        return cls(correct, metrics, breakdown, applies, [e for p in parts for e in p.examples])

    @classmethod
    def _absent(cls, like: "Scores") -> "Scores":
        """Scores that apply to none of ``like``'s problems.

        Returns:
            All-false scores shaped as ``like``'s, with no metrics or breakdown and ``applies`` all false.
        """
        import torch

        return cls(torch.zeros_like(like.correct.cpu()), {}, {}, torch.zeros(len(like), dtype=torch.bool))


def add_column_breakdown(scores: Scores, problems: Sequence[Problem]) -> Scores:
    """``scores`` with rows by the number of carries (or borrows), and carry-in rows under each digit place.

    Does nothing for operations without a column rule (``mul``, most custom ones).
    The rows share the tensors of ``scores``; only which problems they count differs.

    Returns:
        ``scores`` itself, its ``breakdown`` extended in place (unchanged without a column rule).
    """
    rule = column_rule(problems)
    if rule is None:
        return scores
    count_name, in_name = COLUMN_NAMES[rule]
    moves = [incoming(p.a, p.b, rule) for p in problems]
    counts = torch.tensor([sum(m) for m in moves])
    scores.breakdown[count_name] = {
        str(k): Scores(scores.correct, scores.metrics, applies=_both(scores.applies, counts == k)) for k in sorted(set(counts.tolist()))
    }
    for label, sub in scores.breakdown.get("place", {}).items():
        place = place_index(label)
        if place is None:
            continue
        gets = torch.tensor([place < len(m) and m[place] for m in moves])
        sub.breakdown[in_name] = {
            "yes": Scores(sub.correct, sub.metrics, applies=_both(sub.applies, gets)),
            "no": Scores(sub.correct, sub.metrics, applies=_both(sub.applies, ~gets)),
        }
    return scores


def _both(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return b if a is None else a.cpu() & b
