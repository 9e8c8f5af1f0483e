"""The logit lens: each layer's residual through the model's final norm and unembedding.

Each layer's residual is normalised by the final norm with its *own*
statistics, then unembedded; the prediction is the top-1 over the full
vocabulary. At the last layer this is exactly the model's own prediction.
"""

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens_digits.decoders.base import Decoder, Scores, Target, register_decoder
from lens_digits.readout import Readout
from lens_digits.residuals import ResidualSet


@register_decoder
class LogitLens(Decoder):
    """Top-1 of the final norm and unembedding at each layer.

    Target ``model`` is scored like ``answer`` on residuals collected with the
    model's greedy answer as the answer tokens.

    Metrics per cell: ``gold_rank`` (mean rank of the gold token, 0 = top-1;
    for ``answer`` averaged over the answer's tokens) and ``gold_prob`` (mean
    probability of the gold token; for ``answer`` of the whole answer under
    teacher forcing, the product over its tokens).
    """

    name = "logit_lens"
    targets = ("first", "answer", "model")

    def __init__(self, readout: Readout, max_logits: int = 2**25) -> None:
        """``max_logits`` caps how many logits are held at once (memory knob)."""
        self.readout = readout
        self.max_logits = max_logits
        self._last: tuple[ResidualSet, Tensor, Tensor, Tensor] | None = None

    @classmethod
    def from_model(cls, model: Any, **options: Any) -> "LogitLens":
        """A logit lens reading through ``model``'s final norm and unembedding."""
        return cls(Readout(model), **options)

    @torch.inference_mode()
    def decode(
        self, data: ResidualSet, n_pos: int | None = None
    ) -> tuple[Int[Tensor, "problem layer pos"], Float[Tensor, "problem layer pos"], Float[Tensor, "problem layer pos"]]:
        """Top-1 token id, rank of the gold token (0 = top-1) and its log-probability.

        Computed for every problem, layer and answer position (the first
        ``n_pos`` positions; all by default), a chunk of problems at a time so
        that at most ``max_logits`` logits are held at once.
        """
        n, n_layers, all_pos, _ = data.resid.shape
        n_pos = all_pos if n_pos is None else n_pos
        gold = data.target_ids[:, :n_pos].clamp(min=0)  # (N, pos)
        top1 = torch.zeros(n, n_layers, n_pos, dtype=torch.long)
        rank = torch.zeros(n, n_layers, n_pos)
        logp = torch.zeros(n, n_layers, n_pos)
        chunk = max(1, self.max_logits // max(1, n_pos * self.readout.d_vocab))
        for layer in range(n_layers):
            for s in range(0, n, chunk):
                g = gold[s : s + chunk].to(self.readout.device)  # (b, pos)
                logits = self.readout(data.resid[s : s + chunk, layer, :n_pos])  # (b, pos, vocab)
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
        return Scores(correct, {"gold_rank": mean_rank, "gold_prob": prob})

    def settings(self) -> dict[str, Any]:
        """The readout it applies (norm and output transforms)."""
        return {"readout": self.readout.describe()}
