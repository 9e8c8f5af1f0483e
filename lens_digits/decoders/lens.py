"""Lenses: decoders that turn each layer's residual into logits over the vocabulary.

A lens implements :meth:`Lens.layer_logits` (the logit lens: the model's own
readout; a tuned lens: a per-layer translator, then the readout). This base
class does the rest, the same for every lens: top-1, gold rank and gold
log-probability at every layer and answer position, a bounded chunk of logits
at a time, and the ``Scores`` of targets ``first``, ``answer`` and ``model``
(an answer counts at a layer only if every one of its positions is top-1 there).
"""

import abc
from collections import Counter
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens_digits.decoders.base import Decoder, Scores, Target
from lens_digits.residuals import ResidualSet


class Lens(Decoder):
    """Base class of token-level decoders; subclasses implement :meth:`layer_logits`.

    Metrics per cell: ``gold_rank`` (mean rank of the gold token, 0 = top-1;
    for ``answer`` averaged over the answer's tokens), ``gold_prob`` (mean
    probability of the gold token; for ``answer`` of the whole answer under
    teacher forcing, the product over its tokens) and ``baseline`` (the
    accuracy of always answering the most common gold answer of the scale's
    train problems: what a layer that reads nothing but a constant scores). Target ``model`` is scored
    like ``answer`` on residuals collected with the model's greedy answer as
    the answer tokens.
    """

    targets = ("first", "answer", "model")

    def __init__(self, d_vocab: int, max_logits: int = 2**25) -> None:
        """``max_logits`` caps how many logits are held at once (memory knob)."""
        self.d_vocab = int(d_vocab)
        self.max_logits = int(max_logits)
        self._last: tuple[ResidualSet, Tensor, Tensor, Tensor] | None = None
        self._common: dict[str, dict[int, tuple[int, ...]]] = {}

    def fit(self, train: ResidualSet, val: ResidualSet) -> None:
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

    @abc.abstractmethod
    def layer_logits(self, resid: Float[Tensor, "batch pos d_model"], layer: int) -> Float[Tensor, "batch pos d_vocab"]:
        """Float32 logits of residuals taken at layer column ``layer``."""

    @torch.inference_mode()
    def decode(
        self, data: ResidualSet, n_pos: int | None = None
    ) -> tuple[Int[Tensor, "problem layer pos"], Float[Tensor, "problem layer pos"], Float[Tensor, "problem layer pos"]]:
        """Top-1 token id, rank of the gold token (0 = top-1) and its log-probability.

        Computed for every problem, layer and answer position (the first
        ``n_pos`` positions; all by default), a chunk of problems at a time so
        that at most ``max_logits`` logits are held at once.
        """
        n, n_columns, all_pos, _ = data.resid.shape
        n_pos = all_pos if n_pos is None else n_pos
        gold = data.target_ids[:, :n_pos].clamp(min=0)  # (N, pos)
        top1 = torch.zeros(n, n_columns, n_pos, dtype=torch.long)
        rank = torch.zeros(n, n_columns, n_pos)
        logp = torch.zeros(n, n_columns, n_pos)
        chunk = max(1, self.max_logits // max(1, n_pos * self.d_vocab))
        for layer in range(n_columns):
            for s in range(0, n, chunk):
                logits = self.layer_logits(data.resid[s : s + chunk, layer, :n_pos], layer)  # (b, pos, vocab)
                g = gold[s : s + chunk].to(logits.device)  # (b, pos)
                gold_logit = logits.gather(-1, g[..., None])  # (b, pos, 1)
                top1[s : s + chunk, layer] = logits.argmax(-1).cpu()
                rank[s : s + chunk, layer] = (logits > gold_logit).sum(-1).float().cpu()
                logp[s : s + chunk, layer] = (gold_logit[..., 0] - logits.logsumexp(-1)).cpu()
        return top1, rank, logp

    def score(self, data: ResidualSet, target: Target) -> Scores:
        """Correctness, gold rank and gold probability per problem and layer.

        All positions of ``data`` are decoded once and kept until another set
        comes, so scoring ``first`` and then ``answer`` on the same set costs one
        decode.
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
        return Scores(correct, metrics)

    def settings(self) -> dict[str, Any]:
        """Nothing beyond the name (subclasses add theirs)."""
        return {}
