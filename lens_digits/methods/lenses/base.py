"""Lenses: decoders that turn each layer's residual into logits over the vocabulary, through the model's own readout.

A lens implements :meth:`Lens.transform_hidden` (the logit lens: nothing; a
tuned lens: a per-layer translator); the base class owns the model's readout
and does the rest, the same for every lens: top-1, gold rank and gold
log-probability at every layer and answer position, a bounded chunk of logits
at a time, and the ``Scores`` of targets ``first``, ``answer`` and ``model``
(an answer counts at a layer only if every one of its positions is top-1 there).
"""

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens_digits.errors import LensDigitsError, NonFiniteError
from lens_digits.methods.base import Decoder
from lens_digits.methods.examples import Example
from lens_digits.methods.lenses.numbers import numeric_scores, place_scores
from lens_digits.methods.scores import Scores, Target
from lens_digits.model.adapter import ModelAdapter
from lens_digits.model.finite import weights_note
from lens_digits.model.readout import Readout
from lens_digits.model.reductions import reduce_logits
from lens_digits.residuals.collect import ResidualSet

WITHIN = (1, 10)
"""Default k of the lenses' ``within_k`` scores (Zhou et al. 2024 report +-1 and +-10)."""


def default_max_logits(device: torch.device) -> int:
    """How many logits a lens holds at once on ``device`` unless told otherwise.

    2**25 (128 MiB of float32) on a CPU; 2**27 (512 MiB) on an accelerator, so
    that a chunk of rows is large enough to keep it busy (about 880 rows at a
    vocabulary of 151,936).

    Returns:
        The number of logits: 2**25 on a CPU, 2**27 elsewhere.
    """
    return 2**25 if torch.device(device).type == "cpu" else 2**27


def check_within(within: Sequence[int] | str) -> tuple[int, ...]:
    """The k of ``within_k`` scores: non-negative integers, sorted, from a list or a string such as ``"1,10"``.

    Returns:
        The k, sorted, duplicates dropped.

    Raises:
        LensDigitsError: An item is not an integer of at least 0.
    """
    from lens_digits.settings import _int_list

    return tuple(sorted(_int_list("within", within, 0)))


class Lens(Decoder):
    """Base class of lenses: the model's readout (final norm, unembedding, output transforms) of each layer's residual.

    A lens writes one method, :meth:`transform_hidden`: what it does to a
    layer's residual before the model's readout (the logit lens: nothing; a
    tuned lens: its translator). The base class does the rest, the same for
    every lens: the readout (with the ``norm`` mode; the last column is always
    the model's own prediction), the tiled reduction that never holds a row's
    whole logits, the ``baseline``, the non-finite checks and its ``run.json``
    description.

    >>> import lens_digits as ld
    >>> class Doubled(Lens):
    ...     name = "doubled_doc_example"
    ...     def transform_hidden(self, resid, layer):
    ...         return 2 * resid
    >>> model = ld.testing.tiny_model()
    >>> grid = ld.run_sweep(model, scales=[1], n_per_scale=5, methods=[Doubled.from_model(model)], target="first")
    >>> grid.methods
    ['doubled_doc_example']

    Metrics per cell: ``gold_rank`` (mean rank of the gold token, 0 = top-1;
    for ``answer`` averaged over the answer's tokens), ``gold_prob`` (mean
    probability of the gold token; for ``answer`` of the whole answer under
    teacher forcing, the product over its tokens) and ``baseline`` (the
    accuracy of always answering the most common gold answer of the scale's
    train problems: what a layer that reads nothing but a constant scores). Target ``model`` is scored
    like ``answer`` on residuals collected with the model's greedy answer as
    the answer tokens.

    With a tokenizer, targets ``answer`` and ``model`` also get numeric scores
    of the number a layer reads: its top-1 tokens at the answer positions
    (teacher-forced), joined and read as an integer. ``numeric`` is the share of
    problems where that is a number at all; ``abs_error`` the mean absolute
    error against the target's number (the answer; for ``model`` the model's own
    answer) over those; ``within_1``, ``within_10`` (``within`` sets the k) the
    share of all problems whose number is within ±k of it. And they get
    ``place`` rows: for tokenizers with at most one digit per token, one per
    digit place (``units``, ``tens``, ...: the answer token holding that digit);
    otherwise one per answer token (``token 1``, ``token 2``, ...).
    """

    targets = ("first", "answer", "model")
    fits = False  # a lens reads the train problems' tokens only (for its baseline)
    needs_model = True  # it reads through the model's unembedding
    uses = {"norm": "norm", "within": "within"}

    def __init__(
        self,
        readout: "Readout | int | None" = None,
        max_logits: int | None = None,
        *,
        final: "Readout | None" = None,
        tokenizer: Any = None,
        within: Sequence[int] = WITHIN,
        d_vocab: int | None = None,
    ) -> None:
        """Read through ``readout``; ``max_logits`` caps how many logits are held at once (default :func:`default_max_logits`).

        With a readout that skips the final norm (``norm="none"``), ``final`` (the
        model's own readout) reads the last column, so that it stays the model's
        own prediction. ``tokenizer`` (default: the readout's, the model's) turns
        top-1 tokens into numbers and answer tokens into digit places; without one,
        no numeric scores and no place rows. ``within`` are the k of the ``within_k``
        scores. (Before 0.2 a lens was built from the vocabulary size and wrote its
        own :meth:`layer_logits`; ``Lens(d_vocab=...)`` still works that way.)

        Raises:
            LensDigitsError: Neither a readout nor a vocabulary size is given, or ``within`` is not non-negative integers.
        """
        if readout is None or isinstance(readout, int):
            if readout is None and d_vocab is None:
                raise LensDigitsError("a lens reads through the model's readout: Lens(Readout(model)), or Lens.from_model(model)")
            self.readout: Readout | None = None
            self.d_vocab = int(readout if readout is not None else d_vocab)  # type: ignore[arg-type]
        else:
            self.readout = readout
            self.d_vocab = readout.d_vocab
            tokenizer = tokenizer if tokenizer is not None else readout.tokenizer
        self.final = final
        self.max_logits = None if max_logits is None else int(max_logits)
        self.tokenizer = tokenizer
        self.within = check_within(within)
        self._texts: dict[int, str] = {}
        self._last: tuple[ResidualSet, Tensor, Tensor, Tensor] | None = None
        self._common: dict[str, dict[int, tuple[int, ...]]] = {}

    @classmethod
    def from_model(cls, model: Any, norm: str = "final", **options: Any) -> "Lens":
        """A lens through ``model``'s readout: its final norm (``norm="final"``, or none: ``"none"``), unembedding, output transforms.

        Returns:
            The lens (untrained, for lenses that learn).

        Raises:
            LensDigitsError: ``model`` is None.
        """
        if model is None:
            raise LensDigitsError(f"the {getattr(cls, 'name', cls.__name__)} reads through the model's unembedding: give the model")
        model = ModelAdapter.wrap(model)  # a user's entry point too: the TransformerLens model itself works
        final = Readout(model) if norm != "final" else None
        return cls(Readout(model, norm=norm), final=final, **options)

    # ---- what a lens does -----------------------------------------------------------------------

    def transform_hidden(self, resid: Float[Tensor, "row d_model"], layer: int) -> Float[Tensor, "row d_model"]:
        """What this lens does to residuals of layer column ``layer`` before the model's readout (default: nothing).

        Returns:
            Residuals of the same shape, read by the model's readout.
        """
        return resid

    def readout_at(self, layer: int) -> Readout:
        """The readout of layer column ``layer``: the model's own at the last column, this lens's elsewhere.

        Returns:
            The readout: ``final`` at the last column when the lens has one, its ``readout`` elsewhere.

        Raises:
            LensDigitsError: The lens was built without a readout (the pre-0.2 way) and has no :meth:`layer_logits`.
        """
        if self.final is not None and self.readout is not None and layer == self.readout.n_layers:
            return self.final
        if self.readout is None:
            raise LensDigitsError(f"{type(self).__name__} has no readout: build it with from_model(model), or write layer_logits")
        return self.readout

    def layer_logits(self, resid: Float[Tensor, "row d_model"], layer: int) -> Float[Tensor, "row d_vocab"]:
        """Logits of residuals taken at layer column ``layer``, in the model's dtype: the readout of :meth:`transform_hidden`.

        Returns:
            One row of logits over the vocabulary per residual.
        """
        with torch.inference_mode():
            return self.readout_at(layer)(self.transform_hidden(resid, layer), upcast=False)

    def reduce_layer(
        self, resid: Float[Tensor, "row d_model"], layer: int, gold: Int[Tensor, " row"]
    ) -> tuple[Int[Tensor, " row"], Float[Tensor, " row"], Float[Tensor, " row"]]:
        """Top-1, gold rank and gold log-probability of residuals at layer column ``layer``.

        The readout's tiled reduction of :meth:`transform_hidden`, which never
        holds a row's whole logits at once; a lens that writes its own
        :meth:`layer_logits` instead is reduced from those
        (:func:`~lens_digits.model.reductions.reduce_logits`).

        Returns:
            ``(top1, rank, log_prob)`` per row.
        """
        if type(self).layer_logits is not Lens.layer_logits:
            return reduce_logits(self.layer_logits(resid, layer), gold)
        with torch.inference_mode():
            return self.readout_at(layer).reduce(self.transform_hidden(resid, layer), gold)

    def observe(self, train: ResidualSet) -> None:
        """Note the most common gold answer of each scale's train problems: the ``baseline`` guess.

        Only tokens are read (a lens learns nothing from residuals), so the model
        need not run on train problems.
        """
        first: dict[int, Counter[tuple[int, ...]]] = {}
        whole: dict[int, Counter[tuple[int, ...]]] = {}
        for p, e in zip(train.problems, train.encoded, strict=True):
            first.setdefault(p.scale, Counter())[tuple(e.answer_ids[:1])] += 1
            whole.setdefault(p.scale, Counter())[tuple(e.answer_ids)] += 1
        self._common = {
            "first": {s: c.most_common(1)[0][0] for s, c in first.items()},
            "answer": {s: c.most_common(1)[0][0] for s, c in whole.items()},
        }

    def settings(self) -> dict[str, Any]:
        """The readout it reads through and its options, then :meth:`describe` (what a subclass adds), for ``run.json``.

        Returns:
            A new dict: the options, ``readout`` and ``norm`` (with a readout), ``within``, then what :meth:`describe` adds.
        """
        out: dict[str, Any] = dict(getattr(self, "options", {}))
        if self.readout is not None:
            out["readout"] = self.readout.describe()
            out["norm"] = self.readout.norm
        return out | {"within": list(self.within)} | self.describe()

    def describe(self) -> dict[str, Any]:
        """What a subclass adds to :meth:`settings` (default: nothing).

        Returns:
            JSON-ready entries by name; an empty dict here.
        """
        return {}

    @torch.inference_mode()
    def decode(
        self, data: ResidualSet, n_pos: int | None = None
    ) -> tuple[Int[Tensor, "problem layer pos"], Float[Tensor, "problem layer pos"], Float[Tensor, "problem layer pos"]]:
        """Top-1 token id, rank of the gold token (0 = top-1) and its log-probability.

        Computed at every layer for the real answer positions only (the first
        ``n_pos``; all by default): positions past an answer's end are never
        decoded (they hold top-1 ``-1``, rank and log-probability 0). Logits are
        made a bounded chunk of rows at a time (at most ``max_logits`` of them),
        and each chunk is reduced in place: one pass for the maximum and top-1,
        a comparison with the gold logit only on rows whose top-1 is wrong (the
        rank is 0 where it is right), and one pass for the log-sum-exp.

        Returns:
            ``(top1, rank, log_prob)``, each of shape (problem, layer column, position), on the CPU.

        Raises:
            NonFiniteError: A gold log-probability is NaN or infinite; the message names the layer column and :meth:`nonfinite_note`.
        """
        n, n_columns, all_pos, _ = data.resid.shape
        n_pos = all_pos if n_pos is None else n_pos
        target_ids = data.target_ids.cpu()  # the outputs and their indices live on the CPU; residuals stay where they are
        real = target_ids[:, :n_pos] >= 0  # (N, pos)
        problem, position = real.nonzero(as_tuple=True)  # the rows to decode
        gold = target_ids[problem, position]  # (R,)
        top1 = torch.full((n, n_columns, n_pos), -1, dtype=torch.long)
        rank = torch.zeros(n, n_columns, n_pos)
        logp = torch.zeros(n, n_columns, n_pos)
        budget = self.max_logits or default_max_logits(data.resid.device)
        chunk = max(1, budget // max(1, self.d_vocab))
        where = problem.to(data.resid.device), position.to(data.resid.device)
        for layer in range(n_columns):
            parts = []
            for s in range(0, len(gold), chunk):
                rows = slice(s, s + chunk)
                resid = data.resid[where[0][rows], layer, where[1][rows]]  # (r, d)
                parts.append(self.reduce_layer(resid, layer, gold[rows]))
            if parts:  # one copy to the CPU per layer, so a device is never kept waiting between chunks
                top1[problem, layer, position] = torch.cat([p[0] for p in parts]).cpu()
                rank[problem, layer, position] = torch.cat([p[1] for p in parts]).cpu().float()
                gold_logp = torch.cat([p[2] for p in parts]).cpu().float()
                if not bool(torch.isfinite(gold_logp).all()):  # named, never scored as a wrong answer
                    bad = int((~torch.isfinite(gold_logp)).sum())
                    raise NonFiniteError(
                        f"the {self.name}'s logits are not finite (NaN or infinite) at layer column {layer} for {bad} of "
                        f"{len(gold_logp)} answer positions; {self.nonfinite_note()}"
                    )
                logp[problem, layer, position] = gold_logp
        return top1, rank, logp

    def nonfinite_note(self) -> str:
        """Why this lens's logits may not be finite, for the error message (the readout's weights, by default).

        Returns:
            A clause naming the readout's first non-finite parameters, or, without a readout, asking to check the lens's weights.
        """
        readout = getattr(self, "readout", None)
        if readout is None:
            return "check the lens's own weights"
        return weights_note([("ln_final", readout.ln_final), ("unembed", readout.unembed)])

    def score(self, data: ResidualSet, target: Target) -> Scores:
        """Correctness, gold rank and gold probability per problem and layer.

        All positions of ``data`` are decoded once and kept until another set
        comes, so scoring ``first`` and then ``answer`` on the same set costs one
        decode.

        Returns:
            Correctness per problem and layer column, with the metrics and ``place`` rows :class:`Lens` describes.
        """
        n_pos = 1 if target == "first" else data.target_ids.shape[1]
        if self._last is None or self._last[0] is not data:
            self._last = (data, *self.decode(data))
        top1, rank, logp = (t[:, :, :n_pos] for t in self._last[1:])
        gold = data.target_ids[:, :n_pos].cpu()
        m = (gold >= 0)[:, None, :]  # (N, 1, pos)
        correct = ((top1 == gold[:, None, :]) | ~m).all(-1)
        mean_rank = (rank * m).sum(-1) / m.sum(-1).clamp(min=1)
        prob = (logp * m).sum(-1).exp()
        metrics = {"gold_rank": mean_rank, "gold_prob": prob}
        common = self._common.get("first" if target == "first" else "answer")
        if common:  # always answering the train problems' most common answer (for model: the gold one, against its own)
            hit = [float(common.get(p.scale) == tuple(g[g >= 0].tolist())) for p, g in zip(data.problems, gold, strict=True)]
            metrics["baseline"] = torch.tensor(hit)[:, None].expand_as(prob).clone()
        scores = Scores(correct, metrics)
        if target != "first" and self.tokenizer is not None:
            metrics |= numeric_scores(data, top1, target, self.token_text, self.within)
            scores.breakdown["place"] = place_scores(data, top1, rank, logp, self.token_text)
        return scores

    def examples(self, data: ResidualSet, target: Target, rows: Sequence[int]) -> list[Example]:
        """Top tokens with their probabilities and the gold token's rank, at every layer (see :func:`.lens_examples`).

        Returns:
            One example per row of ``data`` in ``rows``.
        """
        from lens_digits.methods.lenses.examples import lens_examples

        return lens_examples(self, data, target, rows, self.max_logits or default_max_logits(data.resid.device))

    # ---- numbers and digit places ------------------------------------------------------------------

    def token_text(self, token_id: int) -> str:
        """The text of one token (cached).

        Returns:
            The token's text, as the tokenizer decodes it alone.
        """
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.tokenizer.decode([token_id])
        return text
