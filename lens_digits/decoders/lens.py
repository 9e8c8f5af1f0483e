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
    def layer_logits(self, resid: Float[Tensor, "row d_model"], layer: int) -> Float[Tensor, "row d_vocab"]:
        """Logits of residuals taken at layer column ``layer`` (in the model's dtype, or float32)."""

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
        """
        n, n_columns, all_pos, _ = data.resid.shape
        n_pos = all_pos if n_pos is None else n_pos
        real = data.target_ids[:, :n_pos] >= 0  # (N, pos)
        problem, position = real.nonzero(as_tuple=True)  # the rows to decode
        gold = data.target_ids[problem, position]  # (R,)
        top1 = torch.full((n, n_columns, n_pos), -1, dtype=torch.long)
        rank = torch.zeros(n, n_columns, n_pos)
        logp = torch.zeros(n, n_columns, n_pos)
        chunk = max(1, self.max_logits // max(1, self.d_vocab))
        where = problem.to(data.resid.device), position.to(data.resid.device)
        for layer in range(n_columns):
            for s in range(0, len(gold), chunk):
                rows = slice(s, s + chunk)
                resid = data.resid[where[0][rows], layer, where[1][rows]]  # (r, d)
                best, hit, lp = reduce_logits(self.layer_logits(resid, layer), gold[rows])
                top1[problem[rows], layer, position[rows]] = best.cpu()
                rank[problem[rows], layer, position[rows]] = hit.cpu()
                logp[problem[rows], layer, position[rows]] = lp.cpu()
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


def reduce_logits(
    logits: Float[Tensor, "row d_vocab"], gold: Int[Tensor, " row"]
) -> tuple[Int[Tensor, " row"], Float[Tensor, " row"], Float[Tensor, " row"]]:
    """Top-1, rank of ``gold`` (how many logits are strictly above it) and ``log_softmax`` at ``gold``, per row.

    Fused for large vocabularies: one pass gives the maximum and its index; the
    rank compares the gold logit with the row only where the top-1 is not the
    gold token; the log-sum-exp reuses the maximum in one more pass (into one
    float32 temporary the size of ``logits``, which is left unchanged). Ties: the
    top-1 is the first maximal index, and a gold token tied with it has rank 0.

    >>> reduce_logits(torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 5.0]]), torch.tensor([2, 2]))[:2]
    (tensor([1, 0]), tensor([1., 0.]))
    """
    gold = gold.to(logits.device)
    best_value, best = logits.max(-1)  # (r,), (r,)
    gold_logit = logits.gather(-1, gold[:, None])[:, 0]  # (r,)
    rank = torch.zeros(len(gold), dtype=torch.float32, device=logits.device)
    wrong = (best != gold).nonzero()[:, 0]
    if len(wrong):
        rank[wrong] = (logits[wrong] > gold_logit[wrong, None]).sum(-1).float()
    shift = best_value.float()[:, None]
    z = logits - shift if logits.dtype == torch.float32 else logits.float().sub_(shift)  # one new float32 tensor
    lse = shift[:, 0] + z.exp_().sum(-1).log_()
    return best, rank, gold_logit.float() - lse
