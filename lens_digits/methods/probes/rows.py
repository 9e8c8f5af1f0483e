"""Where the batched L-BFGS keeps its fits: features turned for a diagonal preconditioner, and running fits laid out in rows.

:func:`rotate` turns each block's features to the eigenvectors of its Gram matrix; :func:`layout` packs the fits
still running into rows of one block's cells, so that finished fits leave the work.
"""

import torch
from torch import Tensor

PRECONDITION_MAX_DIM = 1024
"""Largest feature count (intercept included) for which the solver preconditions with each block's Gram matrix."""


def rotate(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """Features turned to the eigenvectors of each block's weighted Gram matrix, where the solver's preconditioner is diagonal.

    The features (all columns but the last, the intercept's ones) of block ``b`` become ``x[b] @ V[b]``,
    ``V[b]`` the eigenvectors of ``x[b]^T diag(w[b]) x[b]`` (float64 sums). An orthogonal turn changes
    neither the cross-entropy nor ``||W||^2``, so the fit in turned features is the same fit, with
    weights ``V^T W``. Centred features (as standardised ones are) have no Gram term between a feature
    and the intercept, so the curvature bound ``G / 2 + lam`` is then diagonal: the eigenvalues, and the
    intercept's ``sum(w x_last^2)``. Features wider than :data:`PRECONDITION_MAX_DIM` are not turned.

    Returns:
        ``(turned features, V (blocks, d, d), curvature (blocks, d+1))``, or None for wide features.
    """
    if x.shape[-1] > PRECONDITION_MAX_DIM:
        return None
    feats = x[..., :-1].double()
    wd = w.double()[..., None]
    evals, vec = torch.linalg.eigh(torch.bmm(feats.transpose(1, 2), feats * wd))
    last = (x[..., -1:].double().square() * wd).sum(1)  # (blocks, 1)
    turned = torch.cat([torch.bmm(feats, vec).to(x.dtype), x[..., -1:]], -1)
    return turned, vec.to(x.dtype), torch.cat([evals.clamp(min=0), last], 1).to(x.dtype)


def layout(block: Tensor, cell: Tensor, budget_rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rows for the running fits ``(block[i], cell[i])`` (sorted by block): the width with the least work within ``budget_rows`` rows.

    Returns:
        ``(bi, ci, pad, src)``: each row's block, each slot's cell and padding flag, and which running fit
        (index into ``block``) each slot holds (padding repeats its row's first fit).
    """
    counts = torch.bincount(block)
    blocks = counts.nonzero()[:, 0]
    counts = counts[blocks]
    best: tuple[float, int] | None = None
    width = 1
    while True:
        rows = int((-(-counts // width)).sum())
        if rows <= budget_rows:
            cost = rows * (width + 1)  # a row costs about one cell more than its cells (reading its features)
            if best is None or cost < best[0]:
                best = (cost, width)
        if width >= int(counts.max()):
            break
        width = min(2 * width, int(counts.max()))
    assert best is not None  # the widest layout has one row per block, within any budget of at least the box's blocks
    width = best[1]
    per_block = -(-counts // width)
    row_block = blocks.repeat_interleave(per_block)
    start = torch.cumsum(counts, 0) - counts  # first running fit of each block
    row_start = (torch.cumsum(per_block, 0) - per_block).repeat_interleave(per_block)
    row_in_block = torch.arange(int(per_block.sum()), device=block.device) - row_start
    first = start.repeat_interleave(per_block) + row_in_block * width
    last = (start + counts).repeat_interleave(per_block)
    slot = first[:, None] + torch.arange(width, device=block.device)[None, :]
    pad = slot >= last[:, None]
    src = torch.where(pad, first[:, None], slot)
    return row_block, cell[src], pad, src
