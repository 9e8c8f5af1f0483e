"""The batched L-BFGS behind :func:`~lens_digits.methods.probes.optim.fit_multinomial`: one chunk of cells solved together.

Every cell keeps its own curvature history, step size (Armijo backtracking) and
stopping rule; the cells share the tensor work (two batched matrix products per
iteration).
"""

from typing import Any

import torch
from torch import Tensor

NEG = -1e30
"""Logit given to a class a cell may not predict."""


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


def _data_loss(z: Tensor, y: Tensor, w: Tensor, mask: Tensor | None) -> Tensor:
    """Weighted mean cross-entropy (float64) of every cell from its logits ``z`` ``(b, n, m, k)``; ``z`` is overwritten.

    Returns:
        The loss per block and cell, ``(b, m)``.
    """
    if mask is not None:
        z.masked_fill_(~mask[:, None], NEG)
    z.sub_(z.amax(-1, keepdim=True))  # (faster than logsumexp over a last axis of 10)
    lse = z.exp().sum(-1).log_()  # (b, n, m)
    return ((lse - z.gather(-1, y[..., None])[..., 0]) * w[:, :, None]).sum(1, dtype=torch.float64)


def _gradient(x: Tensor, z: Tensor, theta: Tensor, y: Tensor, w: Tensor, lam: Tensor, mask: Tensor | None) -> Tensor:
    """Gradient ``(b, d+1, m, k)`` of every cell's objective at parameters ``theta`` with logits ``z``.

    Returns:
        The gradient of the weighted cross-entropy plus the ridge term (intercept row unpenalised), ``(b, d+1, m, k)``.
    """
    nb, n, dim1 = x.shape
    m, k = theta.shape[2], theta.shape[3]
    if mask is not None:
        z = z.masked_fill(~mask[:, None], NEG)
    r = (z - z.amax(-1, keepdim=True)).exp_()  # softmax, (b, n, m, k); faster than torch.softmax over 10
    r.div_(r.sum(-1, keepdim=True))
    idx = y[..., None]
    r.scatter_(-1, idx, r.gather(-1, idx) - 1)
    r.mul_(w[:, :, None, None])
    grad = torch.bmm(x.transpose(1, 2), r.view(nb, n, m * k)).view(nb, dim1, m, k)
    grad[:, : dim1 - 1].addcmul_(theta[:, : dim1 - 1], _cell(lam.to(theta.dtype)))
    return grad


def _sq_norm(theta: Tensor) -> Tensor:
    """``||W||^2`` per cell (float64), intercept row excluded.

    Returns:
        The squared norms, ``(blocks, cells)``.
    """
    return _norm(theta[:, :-1]).double().square()


class _Box:
    """The blocks x cells still being optimised, with their data sliced out."""

    def __init__(self, x: Tensor, y: Tensor, w: Tensor, lam: Tensor, mask: Tensor, bi: Tensor, mi: Tensor) -> None:
        full_b = bi.numel() == x.shape[0]
        self.bi, self.mi = bi, mi
        self.x = x if full_b else x[bi]
        self.y = (y if full_b else y[bi])[:, :, mi]
        self.w = w if full_b else w[bi]
        self.lam = (lam if full_b else lam[bi])[:, mi]
        mask = (mask if full_b else mask[bi])[:, mi]
        self.mask = None if bool(mask.all()) else mask

    def logits(self, theta: Tensor) -> Tensor:
        nb, n, dim1 = self.x.shape
        m, k = theta.shape[2], theta.shape[3]
        return torch.bmm(self.x, theta.reshape(nb, dim1, m * k)).view(nb, n, m, k)

    def loss(self, z: Tensor, wsq: Tensor, rows: Tensor | None = None) -> Tensor:
        """Objective from logits (overwritten) and ``||W||^2``, for all blocks or ``rows``.

        Returns:
            The regularised loss (float64) per block (or row of ``rows``) and cell.
        """
        if rows is None:
            return _data_loss(z, self.y, self.w, self.mask) + 0.5 * self.lam * wsq
        mask = None if self.mask is None else self.mask[rows]
        return _data_loss(z, self.y[rows], self.w[rows], mask) + 0.5 * self.lam[rows] * wsq

    def gradient(self, z: Tensor, theta: Tensor) -> Tensor:
        return _gradient(self.x, z, theta, self.y, self.w, self.lam, self.mask)


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
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched L-BFGS over blocks ``x.shape[0]`` and cells ``y.shape[2]``; returns (theta, n_iter, converged).

    Each iteration costs two batched matrix products whatever the line search
    does: the logits move along the search direction (``z + t * x @ direction``),
    so trial steps only need element-wise work, and the gradient is taken once
    at the accepted point.

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

    box = _Box(x, y, w, lam, mask, torch.arange(nb, device=dev), torch.arange(m, device=dev))
    theta = torch.zeros(nb, dim1, m, k, device=dev, dtype=dt)
    z = torch.zeros(nb, x.shape[1], m, k, device=dev, dtype=dt)  # logits at theta
    wsq = torch.zeros(nb, m, dtype=torch.float64, device=dev)
    f = box.loss(z.clone(), wsq)
    g = box.gradient(z, theta)
    conv = g.abs().amax(1).amax(-1) <= tol
    done = conv.clone()
    gamma = 1.0 / _norm(g).clamp(min=1e-12)  # first step has unit length, as in L-BFGS-B
    iters = torch.zeros_like(n_iter)
    flat = torch.zeros_like(n_iter)  # consecutive steps with a decrease within rounding noise
    s_hist: list[Tensor] = []
    y_hist: list[Tensor] = []
    rho_hist: list[Tensor] = []

    def write_back() -> None:
        rows = theta_out[box.bi]
        rows[:, :, box.mi] = theta
        theta_out[box.bi] = rows
        for glob, loc in ((n_iter, iters), (converged, conv)):
            sub = glob[box.bi]
            sub[:, box.mi] = loc
            glob[box.bi] = sub

    for _ in range(max_iter):
        active = ~done
        if bar is not None:
            bar.update(1)
            bar.set_postfix(running=f"{int(active.sum())}/{active.numel()} fits", refresh=False)
        if not active.any():
            break
        # Compact to the blocks and cells still running once they are a small enough part of the box.
        keep_b, keep_m = active.any(1).nonzero()[:, 0], active.any(0).nonzero()[:, 0]
        if keep_b.numel() * keep_m.numel() <= 0.75 * active.numel():
            write_back()
            box = _Box(x, y, w, lam, mask, box.bi[keep_b], box.mi[keep_m])

            def cut(t: Tensor, kb: Tensor = keep_b, km: Tensor = keep_m) -> Tensor:
                return t[kb][:, :, km] if t.dim() == 4 else t[kb][:, km]

            theta, z, f, g, wsq, gamma, iters, flat, conv, done = (cut(t) for t in (theta, z, f, g, wsq, gamma, iters, flat, conv, done))
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
        q.mul_(_cell(gamma))
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
        step = torch.ones_like(gamma)
        accepted = torch.zeros_like(gamma)
        pending = active.clone()
        f_new = f.clone()
        for _ in range(max_ls):
            rows: Tensor | None = pending.any(1).nonzero()[:, 0]
            if rows is not None and rows.numel() == pending.shape[0]:
                rows = None  # every block: no copies

            def pick(t: Tensor, r: Tensor | None = rows) -> Tensor:
                return t if r is None else t[r]

            t_r = pick(step).double()
            trial_sq = pick(wsq) + 2 * t_r * pick(w_d) + t_r.square() * pick(d_d)
            ft = box.loss(torch.addcmul(pick(z), _cell(pick(step)), pick(dz)), trial_sq, rows)
            f_r, gd_r = pick(f), pick(gd).double()
            ok = pick(pending) & torch.isfinite(ft) & (ft <= f_r + 1e-4 * t_r * gd_r)
            acc_upd = torch.where(ok, pick(step), pick(accepted))
            f_upd = torch.where(ok, ft, pick(f_new))
            pend = pick(pending) & ~ok
            quad = -gd_r * t_r**2 / (2 * (ft - f_r - gd_r * t_r))
            quad = torch.nan_to_num(quad, nan=0.0, posinf=0.0, neginf=0.0)
            shrunk = torch.minimum(torch.maximum(quad, 0.1 * t_r), 0.5 * t_r).to(step.dtype)
            step_upd = torch.where(pend, shrunk, pick(step))
            if rows is None:
                accepted, f_new, pending, step = acc_upd, f_upd, pend, step_upd
            else:
                accepted[rows], f_new[rows], pending[rows], step[rows] = acc_upd, f_upd, pend, step_upd
            if not pending.any():
                break
        failed = pending  # no decrease found: stop these cells where they are
        moved = active & ~failed

        theta_new = torch.addcmul(theta, _cell(accepted), direction)
        z.addcmul_(_cell(accepted), dz)
        del dz, direction
        g_new = box.gradient(z, theta_new)
        s = theta_new - theta
        yv = g_new - g
        sy, yy = _dot(s, yv), _dot(yv, yv)
        valid = moved & (sy > 1e-10 * yy) & (yy > 0)
        s_hist.append(s)
        y_hist.append(yv)
        rho_hist.append(torch.where(valid, 1.0 / sy.where(valid, torch.ones_like(sy)), torch.zeros_like(sy)))
        if len(s_hist) > history:
            del s_hist[0], y_hist[0], rho_hist[0]
        gamma = torch.where(valid, sy / yy.where(valid, torch.ones_like(yy)), gamma)
        small = (f - f_new) <= ftol * torch.maximum(f.abs(), f_new.abs()).clamp(min=1)
        flat = torch.where(moved & small, flat + 1, torch.zeros_like(flat))
        theta, f, g = theta_new, f_new, g_new
        wsq = _sq_norm(theta)
        iters += moved
        conv = conv | (moved & (g.abs().amax(1).amax(-1) <= tol))
        done = done | conv | failed | (flat >= 3)
    write_back()
    return theta_out, n_iter, converged
