"""Fused reductions of logits: top-1, rank of the gold token and its log-probability, per row.

:func:`reduce_logits` reduces logits that are already there, in three passes
where the plain computation takes five. :func:`reduce_tiled` makes the logits
a slice of the vocabulary at a time (``x @ W_U[:, slice]``) and reduces each
slice while it is still in cache: a streaming maximum and top-1, a streaming
log-sum-exp, and a count of the logits above the gold one. The slices that hold
a gold token are made first (and kept until their turn), so the count compares
with the gold logit exactly as its slice made it: the rank is that of the
logits the slices hold, ties included, in any dtype.
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

    Returns:
        ``(top1, rank, log_prob)`` per row: the index of the largest logit, how many logits are strictly above the
        gold one (float32), and the gold token's log-probability (float32).

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
    made in that dtype and reduced in float32. Every logit is made once: the
    tiles that hold some row's gold token are made first and kept until their
    turn, so each row's gold logit is known, exactly as its tile makes it,
    before any comparison. With ``gold`` on the CPU nothing waits for the
    device; otherwise listing those tiles does, once per call.

    Returns:
        ``(top1, rank, log_prob)`` per row, as :func:`reduce_logits` gives them for the full logits, on ``x``'s device.
    """
    n, vocab = x.shape[0], W.shape[1]
    tiles = torch.unique(gold.cpu() // tile).tolist()  # gold on the CPU (as lenses pass it): no wait for the device
    gold = gold.to(x.device)

    def logits(k: int) -> Tensor:
        cols = slice(k * tile, min((k + 1) * tile, vocab))
        z = torch.addmm(b[cols], x, W[:, cols]) if b is not None else x @ W[:, cols]
        z = transform(z) if transform is not None else z
        return z.float()

    # The gold logits first, from the tiles that hold them (kept: each logit is made once).
    home = gold // tile
    held: dict[int, Tensor] = {}
    exact = torch.zeros(n, device=x.device)
    for k in tiles:
        held[k] = z = logits(k)
        at = (gold - k * tile).clamp(0, z.shape[1] - 1)
        exact = torch.where(home == k, z.gather(1, at[:, None])[:, 0], exact)
    best_value = torch.full((n,), -torch.inf, device=x.device)
    best = torch.zeros(n, dtype=torch.long, device=x.device)
    total = torch.zeros(n, device=x.device)
    above = torch.zeros(n, dtype=torch.long, device=x.device)
    for k in range((vocab + tile - 1) // tile):
        z = held.pop(k) if k in held else logits(k)  # (n, t) float32
        value, index = z.max(-1)
        better = value > best_value  # strictly: ties keep the earlier (smaller) index
        best = torch.where(better, index + k * tile, best)
        new_max = torch.maximum(best_value, value)
        total = total * (best_value - new_max).exp() + (z - new_max[:, None]).exp_().sum(-1)
        best_value = new_max
        above += (z > exact[:, None]).sum(-1)
    rank = torch.where(best == gold, torch.zeros_like(above), above).float()
    return best, rank, exact - (best_value + total.log())
