"""The batched L-BFGS behind :func:`~lens_digits.methods.probes.optim.fit_multinomial`: one chunk of cells solved together.

Every cell keeps its own curvature history, step size (Armijo backtracking) and
stopping rule; the cells share the tensor work (two batched matrix products per
iteration).
"""

from typing import Any

import torch
from torch import Tensor

from lens_digits.methods.probes.rows import layout

NEG = -1e30
"""Logit given to a class a cell may not predict."""

RELAYOUT = 0.9
"""The running fits are laid out again when that leaves at most this share of the work (slots, and a slot per row)."""


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-cell inner product of two parameter tensors ``(blocks, d+1, cells, digits)`` -> ``(blocks, cells)``.

    Returns:
        The inner products, ``(blocks, cells)``.
    """
    return (a * b).sum(1).sum(-1)  # reducing the long axis first is several times faster than sum((1, 3))


def _norm(a: Tensor) -> Tensor:
    """Per-cell 2-norm of a parameter tensor ``(blocks, d+1, cells, digits)`` -> ``(blocks, cells)``.

    Returns:
        The norms, ``(blocks, cells)``.
    """
    return torch.linalg.vector_norm(torch.linalg.vector_norm(a, dim=1), dim=-1)


def _cell(v: Tensor) -> Tensor:
    """Broadcast a per-cell ``(blocks, cells)`` tensor against parameters.

    Returns:
        A view of shape ``(blocks, 1, cells, 1)``.
    """
    return v[:, None, :, None]


def _softmax_(z: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Softmax of logits ``z`` ``(b, n, m, k)`` over the allowed classes; ``z`` is overwritten with ``z - max``.

    Returns:
        The probabilities and the log-sum-exp of ``z - max`` ``(b, n, m)``.
    """
    if mask is not None:
        z.masked_fill_(~mask[:, None], NEG)
    z.sub_(z.amax(-1, keepdim=True))  # (faster than logsumexp or softmax over a last axis of 10)
    p = z.exp()
    total = p.sum(-1)
    return p.div_(total[..., None]), total.log_()


def _data_loss(z: Tensor, y: Tensor, w: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Weighted mean cross-entropy (float64) of every cell from its logits ``z`` ``(b, n, m, k)``; ``z`` is overwritten.

    Returns:
        The loss per block and cell ``(b, m)``, and the softmax at ``z`` (what the gradient there needs).
    """
    p, lse = _softmax_(z, mask)
    return ((lse - z.gather(-1, y[..., None])[..., 0]) * w[:, :, None]).sum(1, dtype=torch.float64), p


def _gradient(x: Tensor, r: Tensor, theta: Tensor, y: Tensor, w: Tensor, lam: Tensor) -> Tensor:
    """Gradient ``(b, d+1, m, k)`` of every cell's objective at parameters ``theta``, whose softmax is ``r`` (overwritten).

    Returns:
        The gradient of the weighted cross-entropy plus the ridge term (intercept row unpenalised), ``(b, d+1, m, k)``.
    """
    nb, n, dim1 = x.shape
    m, k = theta.shape[2], theta.shape[3]
    idx = y[..., None]
    r.scatter_(-1, idx, r.gather(-1, idx) - 1)
    r.mul_(w[:, :, None, None])
    # (r^T x)^T: with few cells a row, much faster than x^T r, whose transposed x is a strided operand.
    grad = torch.bmm(r.view(nb, n, m * k).transpose(1, 2), x).transpose(1, 2).contiguous().view(nb, dim1, m, k)
    grad[:, : dim1 - 1].addcmul_(theta[:, : dim1 - 1], _cell(lam.to(theta.dtype)))
    return grad


def _sq_norm(theta: Tensor) -> Tensor:
    """``||W||^2`` per cell (float64), intercept row excluded.

    Returns:
        The squared norms, ``(blocks, cells)``.
    """
    return _norm(theta[:, :-1]).double().square()


class _Box:
    """The fits still being optimised, laid out as rows of cells, with their data sliced out.

    Row ``r`` holds block ``bi[r]``'s cells ``ci[r]`` (global cell indices); a block's running cells may
    spread over several rows, and slots marked ``pad`` hold no fit (they never move and are never written
    back). Cells of a row share its block's features, so a row's logits are one matrix product.
    """

    def __init__(
        self, x: Tensor, y: Tensor, w: Tensor, lam: Tensor, mask: Tensor, curv: Tensor | None, bi: Tensor, ci: Tensor, pad: Tensor
    ) -> None:
        nb, n = x.shape[0], x.shape[1]
        whole = bi.numel() == nb and bool((bi == torch.arange(nb, device=bi.device)).all())
        self.bi, self.ci, self.pad = bi, ci, pad
        self.x = x if whole else x[bi]
        self.w = w if whole else w[bi]
        self.y = y[bi].gather(2, ci[:, None, :].expand(-1, n, -1))
        self.lam = lam[bi].gather(1, ci)
        m = mask[bi].gather(1, ci[..., None].expand(-1, -1, mask.shape[-1])) | pad[..., None]
        self.mask = None if bool(m.all()) else m
        self.inv = None if curv is None else (1.0 / (0.5 * curv[bi][:, :, None] + self.lam[:, None, :])).to(x.dtype)  # (rows, d+1, cells)

    def logits(self, theta: Tensor) -> Tensor:
        nb, n, dim1 = self.x.shape
        m, k = theta.shape[2], theta.shape[3]
        return torch.bmm(self.x, theta.reshape(nb, dim1, m * k)).view(nb, n, m, k)

    def precondition(self, q: Tensor) -> Tensor:
        """``q`` scaled in place by each cell's inverse curvature bound ``1 / (curv / 2 + lam)`` along each feature.

        Returns:
            ``q``, preconditioned.
        """
        return q if self.inv is None else q.mul_(self.inv[..., None])

    def loss(self, z: Tensor, wsq: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Objective from logits (overwritten) and ``||W||^2``, for all rows or ``rows``.

        Returns:
            The regularised loss (float64) per row (or row of ``rows``) and cell, and the softmax at ``z``.
        """
        if rows is None:
            f, p = _data_loss(z, self.y, self.w, self.mask)
            return f + 0.5 * self.lam * wsq, p
        f, p = _data_loss(z, self.y[rows], self.w[rows], self._mask(rows))
        return f + 0.5 * self.lam[rows] * wsq, p

    def _mask(self, rows: Tensor | None) -> Tensor | None:
        return self.mask if self.mask is None or rows is None else self.mask[rows]

    def softmax(self, z: Tensor, rows: Tensor | None = None) -> Tensor:
        """Softmax of logits ``z`` (not overwritten) of all rows or of ``rows``.

        Returns:
            The probabilities, zero for the classes a cell may not predict.
        """
        return _softmax_(z.clone() if rows is None else z[rows], self._mask(rows))[0]

    def gradient(self, z: Tensor, theta: Tensor, p: Tensor | None = None) -> Tensor:
        """Gradient at ``theta``, whose logits are ``z``; ``p``: the softmax there where already known (overwritten).

        Returns:
            The gradient of every cell, ``(rows, d+1, cells, digits)``.
        """
        return _gradient(self.x, self.softmax(z) if p is None else p, theta, self.y, self.w, self.lam)


def _solve_chunk(
    x: Tensor,
    y: Tensor,
    w: Tensor,
    lam: Tensor,
    mask: Tensor,
    max_iter: int,
    tol: float,
    history: int,
    max_ls: int,
    bar: Any = None,
    theta0: Tensor | None = None,
    curv: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched L-BFGS over blocks ``x.shape[0]`` and cells ``y.shape[2]``; returns (theta, n_iter, converged).

    Each iteration costs two batched matrix products whatever the line search
    does: the logits move along the search direction (``z + t * x @ direction``),
    so trial steps only need element-wise work, and the gradient is taken once
    at the accepted point. With ``curv`` (features turned by :func:`~lens_digits.methods.probes.rows.rotate`), the initial
    inverse Hessian of each cell is ``gamma (diag(curv) / 2 + lam)^-1``: ``G / 2`` bounds the
    curvature of the cross-entropy along the block's features (``G`` their Gram matrix,
    Böhning's bound), so correlated features (a residual stream's) do not slow the fit;
    without it ``gamma I``, as in L-BFGS-B. ``theta0`` starts every cell elsewhere than at zero
    (a warm start). Once the running fits are a small part of the work, they are laid out again
    in rows of cells of one block each, so a block's slowest fit does not keep its finished
    ones in the work.

    Returns:
        The parameters ``(blocks, d+1, cells, digits)`` (intercept last along ``d+1``), and per block and
        cell the iterations taken and whether the gradient tolerance was reached.
    """
    nb, _, dim1 = x.shape
    m, k = mask.shape[1], mask.shape[2]
    dev, dt = x.device, x.dtype
    theta_out = torch.zeros(nb, dim1, m, k, device=dev, dtype=dt)
    n_iter = torch.zeros(nb, m, dtype=torch.long, device=dev)
    converged = torch.zeros(nb, m, dtype=torch.bool, device=dev)
    ftol = torch.finfo(dt).eps  # a relative decrease this small is rounding noise of the loss

    every = torch.arange(m, device=dev).expand(nb, m)
    box = _Box(x, y, w, lam, mask, curv, torch.arange(nb, device=dev), every, torch.zeros(nb, m, dtype=torch.bool, device=dev))
    if theta0 is None:
        theta = torch.zeros(nb, dim1, m, k, device=dev, dtype=dt)
        z = torch.zeros(nb, x.shape[1], m, k, device=dev, dtype=dt)  # logits at theta
        wsq = torch.zeros(nb, m, dtype=torch.float64, device=dev)
    else:
        theta = theta0.clone()
        z = box.logits(theta)
        wsq = _sq_norm(theta)
    f, p0 = box.loss(z.clone(), wsq)
    g = box.gradient(z, theta, p0)
    del p0
    conv = g.abs().amax(1).amax(-1) <= tol
    done = conv.clone()
    # The first step: (G / 2 + lam)^-1 g bounds the curvature (a step of 1 decreases the loss); without it, unit length as in L-BFGS-B.
    gamma = torch.ones(nb, m, device=dev, dtype=dt) if curv is not None else 1.0 / _norm(g).clamp(min=1e-12)
    iters = torch.zeros_like(n_iter)
    flat = torch.zeros_like(n_iter)  # consecutive steps with a decrease within rounding noise
    s_hist: list[Tensor] = []
    y_hist: list[Tensor] = []
    rho_hist: list[Tensor] = []

    def write_back() -> None:
        r, c = (~box.pad).nonzero(as_tuple=True)
        bl, cl = box.bi[r], box.ci[r, c]
        theta_out.permute(0, 2, 1, 3)[bl, cl] = theta.permute(0, 2, 1, 3)[r, c]
        n_iter[bl, cl] = iters[r, c]
        converged[bl, cl] = conv[r, c]

    tried = -1  # running fits when a new layout was last considered
    for _ in range(max_iter):
        active = ~done
        n_active = int(active.sum())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(running=f"{n_active}/{nb * m} fits", refresh=False)
        if n_active == 0:
            break
        # Lay the running fits out again once that cuts the work by a tenth.
        if n_active <= RELAYOUT * active.numel() and n_active != tried:
            tried = n_active
            r, c = active.nonzero(as_tuple=True)  # row-major: grouped by row, so by block within a row
            order = torch.argsort(box.bi[r], stable=True)
            r, c = r[order], c[order]
            bi, ci, pad, src = layout(box.bi[r], box.ci[r, c], nb)
            if bi.numel() * (ci.shape[1] + 1) <= RELAYOUT * box.bi.numel() * (box.ci.shape[1] + 1):
                write_back()
                rs, cs = r[src], c[src]
                box = _Box(x, y, w, lam, mask, curv, bi, ci, pad)

                def cut(t: Tensor, rs: Tensor = rs, cs: Tensor = cs) -> Tensor:
                    return t.permute(0, 2, 1, 3)[rs, cs].permute(0, 2, 1, 3).contiguous() if t.dim() == 4 else t[rs, cs]

                theta, z, f, g, wsq, gamma, iters, flat, conv = (cut(t) for t in (theta, z, f, g, wsq, gamma, iters, flat, conv))
                done = pad.clone()
                for hist in (s_hist, y_hist, rho_hist):
                    for i, t in enumerate(hist):
                        hist[i] = cut(t)  # one at a time: the old copy is freed before the next is made
                active = ~done

        # Two-loop recursion, per cell.
        q = g.clone()
        alphas = []
        for s, yv, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist), strict=True):
            a = rho * _dot(s, q)
            q.addcmul_(_cell(-a), yv)
            alphas.append(a)
        q = box.precondition(q).mul_(_cell(gamma))
        for s, yv, rho, a in zip(s_hist, y_hist, rho_hist, reversed(alphas), strict=True):
            q.addcmul_(_cell(a - rho * _dot(yv, q)), s)
        direction = q.neg_().mul_(_cell(active))
        gd = _dot(g, direction)
        bad = active & ~(gd < 0)  # not a descent direction (rounding): fall back to steepest descent
        if bad.any():
            steep = -g / _cell(_norm(g).clamp(min=1e-12))
            direction = torch.where(_cell(bad), steep, direction)
            gd = _dot(g, direction)
        dz = box.logits(direction)  # logits move by t * dz along the direction
        w_d = _dot(theta[:, :-1], direction[:, :-1]).double()
        d_d = _sq_norm(direction)
        # Backtracking (Armijo) line search, per cell, with quadratic interpolation: element-wise work only.
        # A trial whose predicted decrease (step * |g.d|) is within the loss's rounding cannot show a decrease:
        # the search stops there (the fit has stalled at the precision of its dtype) instead of shrinking on.
        floor = ftol / 16 * f.abs()
        step = torch.ones_like(gamma)
        accepted = torch.zeros_like(gamma)
        pending = active & (-gd.double() > floor)
        f_new = f.clone()
        p_first = None  # softmax at the first trial (step 1) of every row: the gradient's where that step is taken
        for trial in range(max_ls):
            rows: Tensor | None = pending.any(1).nonzero()[:, 0]
            if rows is not None and rows.numel() == pending.shape[0]:
                rows = None  # every block: no copies

            def pick(t: Tensor, r: Tensor | None = rows) -> Tensor:
                return t if r is None else t[r]

            t_r = pick(step).double()
            trial_sq = pick(wsq) + 2 * t_r * pick(w_d) + t_r.square() * pick(d_d)
            ft, p_trial = box.loss(torch.addcmul(pick(z), _cell(pick(step)), pick(dz)), trial_sq, rows)
            if trial == 0 and rows is None:
                p_first = p_trial
            del p_trial
            f_r, gd_r = pick(f), pick(gd).double()
            ok = pick(pending) & torch.isfinite(ft) & (ft <= f_r + 1e-4 * t_r * gd_r)
            acc_upd = torch.where(ok, pick(step), pick(accepted))
            f_upd = torch.where(ok, ft, pick(f_new))
            quad = -gd_r * t_r**2 / (2 * (ft - f_r - gd_r * t_r))
            quad = torch.nan_to_num(quad, nan=0.0, posinf=0.0, neginf=0.0)
            shrunk = torch.minimum(torch.maximum(quad, 0.1 * t_r), 0.5 * t_r).to(step.dtype)
            pend = pick(pending) & ~ok & (-shrunk.double() * gd_r > pick(floor))
            step_upd = torch.where(pend, shrunk, pick(step))
            if rows is None:
                accepted, f_new, pending, step = acc_upd, f_upd, pend, step_upd
            else:
                accepted[rows], f_new[rows], pending[rows], step[rows] = acc_upd, f_upd, pend, step_upd
            if not pending.any():
                break
        failed = active & (accepted == 0)  # no decrease found (or none it could see): stop these cells where they are
        moved = active & ~failed

        theta_new = torch.addcmul(theta, _cell(accepted), direction)
        z.addcmul_(_cell(accepted), dz)
        del dz, direction
        if p_first is not None:  # rows where some cell took another step (or none) get their softmax anew
            redo = (active & (accepted != 1)).any(1).nonzero()[:, 0]
            if redo.numel():
                p_first[redo] = box.softmax(z, redo)
        g_new = box.gradient(z, theta_new, p_first)
        del p_first
        s = theta_new - theta
        yv = g_new - g
        sy, yy = _dot(s, yv), _dot(yv, yv)
        valid = moved & (sy > 1e-10 * yy) & (yy > 0)
        s_hist.append(s)
        y_hist.append(yv)
        rho_hist.append(torch.where(valid, 1.0 / sy.where(valid, torch.ones_like(sy)), torch.zeros_like(sy)))
        if len(s_hist) > history:
            del s_hist[0], y_hist[0], rho_hist[0]
        ypy = yy if box.inv is None else _dot(yv, box.precondition(yv.clone()))  # y^T H0 y of the unscaled H0
        gamma = torch.where(valid, sy / ypy.where(valid, torch.ones_like(ypy)), gamma)
        small = (f - f_new) <= ftol * torch.maximum(f.abs(), f_new.abs()).clamp(min=1)
        flat = torch.where(moved & small, flat + 1, torch.zeros_like(flat))
        theta, f, g = theta_new, f_new, g_new
        wsq = _sq_norm(theta)
        iters += moved
        conv = conv | (moved & (g.abs().amax(1).amax(-1) <= tol))
        done = done | conv | failed | (flat >= 3)
    write_back()
    return theta_out, n_iter, converged
