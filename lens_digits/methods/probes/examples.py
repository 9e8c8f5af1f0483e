"""A probe's example readings: the digits it predicts at every layer column, most significant first."""

from collections.abc import Sequence
from typing import Any

import torch

from lens_digits.methods.examples import Example
from lens_digits.methods.probes.labels import covered_places, first_token_digits
from lens_digits.methods.scores import Scores, Target
from lens_digits.problems.digits import answer_digits
from lens_digits.residuals.collect import ResidualSet


class ProbeExamples:
    """The example readings of a probe (a base class beside :class:`~lens_digits.methods.base.Decoder`).

    Needs the probe's ``predict(data)`` (digits per problem, layer column and place, units first) and
    ``score(data, target)``.
    """

    def predict(self, data: ResidualSet, control: bool = False) -> torch.Tensor:
        """The probe's predicted digits (see :meth:`~lens_digits.methods.probes.linear.LinearProbe.predict`).

        Returns:
            Digits per problem, layer column and place.

        Raises:
            NotImplementedError: Always: a probe class supplies it.
        """
        raise NotImplementedError

    def score(self, data: ResidualSet, target: Target) -> Scores:
        """The probe's scores (see :meth:`~lens_digits.methods.probes.linear.LinearProbe.score`).

        Returns:
            Per problem and layer column, whether the target's digits were read right.

        Raises:
            NotImplementedError: Always: a probe class supplies it.
        """
        raise NotImplementedError

    @torch.inference_mode()
    def examples(self, data: ResidualSet, target: Target, rows: Sequence[int]) -> list[Example]:
        """The digits the probe predicts for the problems ``rows`` of ``data`` at every layer column.

        A reading's ``read`` holds the places the target reads (every place for ``answer``, the leading digits
        the first answer token holds for ``first``), most significant first; ``ok`` is what its cell counted.

        Returns:
            One example per row, in order, whose ``gold`` is those places of the answer.
        """
        sub = data.select(list(rows))
        correct = self.score(sub, target).correct
        pred = self.predict(sub)  # (n, layer, place), units first
        n_places = pred.shape[-1]
        digits = [answer_digits(p.answer) for p in sub.problems]
        lengths = [len(d) for d in digits]
        width = max([n_places, *lengths])
        cover = covered_places(target, lengths, first_token_digits(sub) if target == "first" else None, width)
        out = []
        for i, p in enumerate(sub.problems):
            places = [q for q in reversed(range(width)) if cover[i, q]]  # most significant first
            gold = "".join(digits[i][lengths[i] - 1 - q] if q < lengths[i] else "0" for q in places)
            layers: list[dict[str, Any]] = []
            for layer in range(sub.n_columns):
                read = "".join(str(int(pred[i, layer, q])) if q < n_places else "?" for q in places)
                layers.append({"read": read, "ok": bool(correct[i, layer])})
            out.append(Example(p, gold, layers))
        return out
