"""Patching's example readings: the patched model's answer at every layer column, and the problem it came from."""

from collections.abc import Sequence
from typing import Any

from lens_digits.methods.examples import Example
from lens_digits.methods.scores import Target
from lens_digits.model.greedy import number_text
from lens_digits.residuals.collect import ResidualSet


class PatchingExamples:
    """The example readings of an activation patching (a base class beside :class:`~lens_digits.methods.base.Intervention`).

    Its ``score`` keeps, in ``_patched``, what the last call found: the scored set and target, each patched
    problem's source, the generated tokens per (problem, layer column), the flip and keep tensors, and the tokenizer.
    """

    _patched: tuple[Any, ...] | None = None

    def examples(self, data: ResidualSet, target: Target, rows: Sequence[int]) -> list[Example] | None:
        """The patched answers of the problems ``rows`` of ``data``, as the last ``score`` of ``data`` and ``target`` found them.

        A reading's ``read`` is the patched model's answer (target ``first``: its next token), ``ok`` whether it is
        the source's (a flip), ``note`` one of ``flip``, ``keep`` (still the problem's own) or ``neither``.

        Returns:
            One example per row, in order, whose ``gold`` is the source's answer (its first token for ``first``) and
            whose ``notes`` name the source problem; None if ``score`` did not just score ``data`` for ``target``.
        """
        if self._patched is None or self._patched[0] is not data or self._patched[1] != target:
            return None
        _, _, source, outputs, flip, keep, tokenizer = self._patched
        out = []
        for i in rows:
            s = source.get(i)
            if s is None:  # not patched: its cells do not count it
                continue
            src = data.problems[s]
            gold = tokenizer.decode([data.encoded[s].answer_ids[0]]) if target == "first" else src.answer
            layers: list[dict[str, Any]] = []
            for layer in range(data.n_columns):
                tokens = outputs[(i, layer)]
                read = tokenizer.decode(tokens[:1]) if target == "first" else number_text(tokenizer, tokens).text
                note = "flip" if flip[i, layer] else "keep" if keep[i, layer] else "neither"
                layers.append({"read": read, "ok": bool(flip[i, layer]), "note": note})
            out.append(Example(data.problems[i], gold, layers, {"source": src.prompt, "source answer": src.answer}))
        return out
