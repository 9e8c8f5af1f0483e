"""Fused reductions of logits: top-1, rank of the gold token and its log-probability, per row.

:func:`reduce_logits` reduces logits that are already there, in three passes
where the plain computation takes five. :func:`reduce_tiled` makes the logits
a slice of the vocabulary at a time (``x @ W_U[:, slice]``) and reduces each
slice while it is still in cache: a streaming maximum and top-1, a streaming
log-sum-exp, and a count of the logits above the gold one. The gold logit is
first estimated with a dot product; the few logits too close to it to be
ordered by the estimate are kept and compared at the end with the gold logit
as its own slice computed it, so the rank is that of the logits the slices
hold, ties included.
"""

from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor


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


def reduce_tiled(
    x: Float[Tensor, "row d_model"],
    W: Float[Tensor, "d_model d_vocab"],
    b: Float[Tensor, " d_vocab"] | None,
    gold: Int[Tensor, " row"],
    transform: Callable[[Tensor], Tensor] | None = None,
    tile: int = 2048,
) -> tuple[Int[Tensor, " row"], Float[Tensor, " row"], Float[Tensor, " row"]]:
    """:func:`reduce_logits` of ``transform(x @ W + b)``, a tile of ``tile`` vocabulary columns at a time.

    ``transform`` must act element by element and keep order (a soft cap, a
    scale); ``x`` and ``W`` share a dtype and device. The logits of a tile are
    made in that dtype and reduced in float32.
    """
    n, vocab = x.shape[0], W.shape[1]
    gold = gold.to(x.device)

    def logits(cols: slice) -> Tensor:
        z = torch.addmm(b[cols], x, W[:, cols]) if b is not None else x @ W[:, cols]
        z = transform(z) if transform is not None else z
        return z.float()

    # An estimate of each row's gold logit, and a band around it wide enough for any rounding difference.
    g = (x.float() * W[:, gold].T.float()).sum(-1)
    if b is not None:
        g = g + b[gold].float()
    if transform is not None:
        g = transform(g.to(x.dtype)).float()
    eps = torch.finfo(x.dtype).eps
    scale = (x.float().abs() * W[:, gold].T.float().abs()).sum(-1) + (b[gold].float().abs() if b is not None else 0) + 1.0
    band = 8 * x.shape[1] ** 0.5 * eps * scale
    hi, lo = g + band, g - band
    best_value = torch.full((n,), -torch.inf, device=x.device)
    best = torch.zeros(n, dtype=torch.long, device=x.device)
    total = torch.zeros(n, device=x.device)
    above = torch.zeros(n, dtype=torch.long, device=x.device)
    exact = torch.empty(n, device=x.device)
    near_rows: list[Tensor] = []
    near_values: list[Tensor] = []
    for start in range(0, vocab, tile):
        cols = slice(start, min(start + tile, vocab))
        z = logits(cols)  # (n, t) float32
        value, index = z.max(-1)
        better = value > best_value  # strictly: ties keep the earlier (smaller) index
        best = torch.where(better, index + start, best)
        new_max = torch.maximum(best_value, value)
        total = total * (best_value - new_max).exp() + (z - new_max[:, None]).exp_().sum(-1)
        best_value = new_max
        over = (z > hi[:, None]).sum(-1)
        above += over
        mixed = ((z >= lo[:, None]).sum(-1) != over).nonzero()[:, 0]  # rows with logits in the band: few
        if len(mixed):
            sub = z[mixed]
            r, c = ((sub >= lo[mixed, None]) & (sub <= hi[mixed, None])).nonzero(as_tuple=True)
            near_rows.append(mixed[r])
            near_values.append(sub[r, c])
        here = (gold >= cols.start) & (gold < cols.stop)
        if here.any():
            rows = here.nonzero()[:, 0]
            exact[rows] = z[rows, gold[rows] - cols.start]
    if near_rows:
        rows_near, values_near = torch.cat(near_rows), torch.cat(near_values)
        above.index_add_(0, rows_near, (values_near > exact[rows_near]).long())
    rank = torch.where(best == gold, torch.zeros_like(above), above).float()
    return best, rank, exact - (best_value + total.log())
