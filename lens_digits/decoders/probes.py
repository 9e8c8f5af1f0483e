"""Linear probes per digit place, fitted for every layer at once by one batched solver.

A probe reads the residual at the last prompt position (position 0 of a
:class:`~lens_digits.residuals.ResidualSet`, before any answer token) and
predicts one digit place of the answer (units, tens, hundreds, ...) with a
10-way multinomial logistic regression. There is one probe per (group, layer,
place), where a group is a digit scale (``scope="per_scale"``) or all scales
together (``scope="pooled"``, one probe set evaluated per scale).

Recipe, per group:

- Labels: the digits of ``|answer|`` (the sign of a negative answer is not
  probed), padded with leading zeros to the group's width (the longest answer
  among its train and validation problems), so "every place right" is "the
  whole number right".
- Features: standardised with the mean and standard deviation of the group's
  *train* problems (population std; a constant feature keeps scale 1).
- Objective, as scikit-learn's ``LogisticRegression(C=C)`` with lbfgs: mean
  cross-entropy plus ``||W||^2 / (2 C n_train)``; the intercept is not
  penalised. Digits never seen among a group's train labels are never predicted.
- Every C of the grid is fitted; for each (group, layer, place) the C with the
  best validation accuracy is kept (ties: lower validation cross-entropy, then
  smaller C). Test problems are only ever scored.
- Control task (in the sense of Hewitt and Liang 2019): the same operation on the
  operands with every digit relabelled by a fixed random permutation (drawn
  with the seed; ``47+85`` becomes ``π(4)π(7)+π(8)π(5)``), and its answer's
  digits as labels. It is a random but consistent function of the operands,
  built exactly like the task, so a model with random weights (whose digit
  embeddings are exchangeable) makes it exactly as easy to read as the real
  answer; a trained model computes the real answer and not this one. A probe
  scores on it only by reading operand identity out of the residual, so
  accuracy above the control (selectivity) is the answer itself, not the
  operands it comes from.
- Chance: the accuracy of always answering the train problems' most common
  label (per scale; per place for the place rows).

All cells (groups x C x layers x places, control included) are solved together
by :func:`fit_multinomial`, a batched L-BFGS with per-cell curvature history,
step sizes and stopping, running on the residuals' device.
"""

import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lens_digits.decoders.base import Decoder, Scores, Target, register_decoder
from lens_digits.errors import LensDigitsError
from lens_digits.residuals import ResidualSet
from lens_digits.tasks import Problem

N_DIGITS = 10
PLACE_NAMES = ("units", "tens", "hundreds", "thousands")
DEFAULT_CS = (0.01, 0.1, 1.0, 10.0)
_NEG = -1e30  # logit of a digit a probe may not predict
_FORMAT = "lens_digits.probe/2"


def place_name(place: int) -> str:
    """Name of digit place ``place`` (0 = units): ``units .. thousands``, then ``10^4``, ``10^5``, ...

    >>> [place_name(p) for p in range(6)]
    ['units', 'tens', 'hundreds', 'thousands', '10^4', '10^5']
    """
    return PLACE_NAMES[place] if place < len(PLACE_NAMES) else f"10^{place}"


def answer_digits(answer: str) -> str:
    """The digits of ``|answer|``, most significant first; the sign is dropped.

    >>> answer_digits("-120")
    '120'
    """
    digits = answer.strip().lstrip("-+")
    if not digits.isdigit():
        raise LensDigitsError(f"probes read decimal integer answers; cannot read digits from answer {answer!r}")
    return digits


def digit_labels(answers: Sequence[str], places: int) -> Int[Tensor, "problem place"]:
    """Digit at each place (column 0 = units) of each answer, leading zeros past its length.

    Places beyond ``places`` are dropped; check lengths first where that matters.

    >>> digit_labels(["7", "-42", "105"], 3).tolist()
    [[7, 0, 0], [2, 4, 0], [5, 0, 1]]
    """
    out = torch.zeros(len(answers), places, dtype=torch.long)
    for i, answer in enumerate(answers):
        digits = answer_digits(answer)[::-1][:places]
        out[i, : len(digits)] = torch.tensor([int(c) for c in digits], dtype=torch.long)
    return out


def first_token_digits(data: ResidualSet) -> list[int]:
    """How many leading digits of each answer its first answer token covers.

    Taken from ``data.first_token_digits`` or ``data.info["first_token_digits"]``
    when present (one entry per problem of ``data``, in order). Otherwise it is
    derived without a tokenizer where that is unambiguous: a one-token answer is
    covered whole; any other answer counts as covering its most significant digit
    only (exact for one-digit-per-token tokenizers, an under-count for chunking
    ones). Values are clamped to ``1 .. len(digits)``: a first token holding only a
    sign or a space counts as covering the most significant digit.
    """
    given = getattr(data, "first_token_digits", None)
    if given is None:
        given = data.info.get("first_token_digits")
    lengths = [len(answer_digits(p.answer)) for p in data.problems]
    if given is None:
        given = [n if len(e.answer_ids) == 1 else 1 for n, e in zip(lengths, data.encoded, strict=True)]
    given = [int(k) for k in given]
    if len(given) != len(data):
        raise LensDigitsError(
            f"first_token_digits has {len(given)} entries but the residual set has {len(data)} problems; "
            "it must be aligned with the problems of the set being scored"
        )
    return [min(max(k, 1), n) for k, n in zip(given, lengths, strict=True)]


def digit_permutation(seed: int) -> list[int]:
    """The control task's relabelling of the ten digits: a seeded permutation that moves every digit.

    >>> sorted(digit_permutation(0)) == list(range(10)) and all(d != i for i, d in enumerate(digit_permutation(0)))
    True
    """
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(N_DIGITS, generator=gen).tolist()
        if all(d != i for i, d in enumerate(perm)):
            return perm


def relabel(value: int, perm: Sequence[int]) -> int:
    """``value`` with each decimal digit ``d`` replaced by ``perm[d]`` (the sign kept).

    >>> relabel(-407, [1, 2, 3, 4, 5, 6, 7, 8, 9, 0])
    -518
    """
    digits = "".join(str(perm[int(c)]) for c in str(abs(value)))
    return -int(digits) if value < 0 else int(digits)


def control_answers(problems: Sequence[Problem], perm: Sequence[int]) -> list[str]:
    """The control task's answers: the same operation on the operands with their digits relabelled.

    A random but consistent function of the operands, built like the task: on a model
    with random weights (whose digit embeddings are exchangeable) it is exactly as hard to
    read as the real answer, and on a trained model it is not what the model computes.
    """
    from lens_digits.tasks import OPERATIONS

    out = []
    for p in problems:
        if p.op not in OPERATIONS:
            raise LensDigitsError(f"the probe control task needs operation {p.op!r} to be registered (ld.register_operation)")
        out.append(str(abs(int(OPERATIONS[p.op].fn(relabel(p.a, perm), relabel(p.b, perm))))))
    return out


def control_labels(problems: Sequence[Problem], perm: Sequence[int], places: int) -> Int[Tensor, "problem place"]:
    """Digit labels of the control task, units first, for ``places`` places."""
    return digit_labels(control_answers(problems, perm), places)


# ---- the batched solver -------------------------------------------------------------------------


@dataclass
class SolverResult:
    """Parameters and convergence of a batch of multinomial logistic regressions.

    Attributes:
        W: Weights, per block, regularisation strength and task.
        b: Intercepts (centred: they sum to zero over the allowed digits).
        n_iter: L-BFGS iterations each cell took.
        converged: Whether the cell reached ``max|gradient| <= tol`` (False where it
            hit ``max_iter`` or stalled at the arithmetic's precision).
    """

    W: Float[Tensor, "block strength task d_model digit"]
    b: Float[Tensor, "block strength task digit"]
    n_iter: Int[Tensor, "block strength task"]
    converged: Bool[Tensor, "block strength task"]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-cell inner product of two parameter tensors ``(blocks, d+1, cells, digits)`` -> ``(blocks, cells)``."""
    return (a * b).sum(1).sum(-1)  # reducing the long axis first is several times faster than sum((1, 3))


def _norm(a: Tensor) -> Tensor:
    """Per-cell 2-norm of a parameter tensor ``(blocks, d+1, cells, digits)`` -> ``(blocks, cells)``."""
    return torch.linalg.vector_norm(torch.linalg.vector_norm(a, dim=1), dim=-1)


def _cell(v: Tensor) -> Tensor:
    """Broadcast a per-cell ``(blocks, cells)`` tensor against parameters."""
    return v[:, None, :, None]


def _data_loss(z: Tensor, y: Tensor, w: Tensor, mask: Tensor | None) -> Tensor:
    """Weighted mean cross-entropy (float64) of every cell from its logits ``z`` ``(b, n, m, k)``; ``z`` is overwritten."""
    if mask is not None:
        z.masked_fill_(~mask[:, None], _NEG)
    z.sub_(z.amax(-1, keepdim=True))  # (faster than logsumexp over a last axis of 10)
    lse = z.exp().sum(-1).log_()  # (b, n, m)
    return ((lse - z.gather(-1, y[..., None])[..., 0]) * w[:, :, None]).sum(1, dtype=torch.float64)


def _gradient(x: Tensor, z: Tensor, theta: Tensor, y: Tensor, w: Tensor, lam: Tensor, mask: Tensor | None) -> Tensor:
    """Gradient ``(b, d+1, m, k)`` of every cell's objective at parameters ``theta`` with logits ``z``."""
    nb, n, dim1 = x.shape
    m, k = theta.shape[2], theta.shape[3]
    if mask is not None:
        z = z.masked_fill(~mask[:, None], _NEG)
    r = (z - z.amax(-1, keepdim=True)).exp_()  # softmax, (b, n, m, k); faster than torch.softmax over 10
    r.div_(r.sum(-1, keepdim=True))
    idx = y[..., None]
    r.scatter_(-1, idx, r.gather(-1, idx) - 1)
    r.mul_(w[:, :, None, None])
    grad = torch.bmm(x.transpose(1, 2), r.view(nb, n, m * k)).view(nb, dim1, m, k)
    grad[:, : dim1 - 1].addcmul_(theta[:, : dim1 - 1], _cell(lam.to(theta.dtype)))
    return grad


def _sq_norm(theta: Tensor) -> Tensor:
    """``||W||^2`` per cell (float64), intercept row excluded."""
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
        """Objective from logits (overwritten) and ``||W||^2``, for all blocks or ``rows``."""
        if rows is None:
            return _data_loss(z, self.y, self.w, self.mask) + 0.5 * self.lam * wsq
        mask = None if self.mask is None else self.mask[rows]
        return _data_loss(z, self.y[rows], self.w[rows], mask) + 0.5 * self.lam[rows] * wsq

    def gradient(self, z: Tensor, theta: Tensor) -> Tensor:
        return _gradient(self.x, z, theta, self.y, self.w, self.lam, self.mask)


def _solve_chunk(
    x: Tensor, y: Tensor, w: Tensor, lam: Tensor, mask: Tensor, max_iter: int, tol: float, history: int, max_ls: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched L-BFGS over blocks ``x.shape[0]`` and cells ``y.shape[2]``; returns (theta, n_iter, converged).

    Each iteration costs two batched matrix products whatever the line search
    does: the logits move along the search direction (``z + t * x @ direction``),
    so trial steps only need element-wise work, and the gradient is taken once
    at the accepted point.
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


def fit_multinomial(
    x: Float[Tensor, "block problem d_model"],
    labels: Int[Tensor, "block problem task"],
    Cs: Sequence[float],
    *,
    sample_weight: Float[Tensor, "block problem"] | None = None,
    classes: Bool[Tensor, "block task digit"] | None = None,
    n_classes: int = N_DIGITS,
    max_iter: int = 100,
    tol: float = 1e-4,
    history: int = 10,
    max_ls: int = 25,
    max_bytes: int = 4 * 2**30,
) -> SolverResult:
    """Fit ``block x len(Cs) x task`` multinomial logistic regressions at once.

    Each cell minimises scikit-learn's ``LogisticRegression(C=C, solver="lbfgs")``
    objective on its block's features and its task's labels: the weighted mean
    cross-entropy plus ``||W||^2 / (2 C sum(sample_weight))``, intercept not
    penalised.

    The cells share the tensor work: an iteration is two batched matrix
    products per block (logits along the search direction, then the gradient)
    covering every C and task, whatever the line search does, since trial steps
    move the logits element-wise. Each cell keeps its own L-BFGS history (as
    scipy's L-BFGS-B, which scikit-learn calls), step size (Armijo backtracking)
    and stopping rule: it stops when ``max|gradient| <= tol`` (scikit-learn's
    ``gtol``), after ``max_iter`` iterations, when its line search finds no
    decrease, or after three steps in a row whose relative decrease is within
    rounding noise (``eps`` of the dtype: stalled at the precision of float32).
    Stopped cells leave the work once a whole block (layer) or column (C, task)
    has stopped. Starting from zero with no randomness, the result is
    deterministic for a given device and thread count.

    Args:
        x: Features, already standardised; rows with zero weight are ignored.
        labels: Class of each problem for each task, in ``0 .. n_classes - 1``.
        Cs: Inverse regularisation strengths (scikit-learn convention).
        sample_weight: Non-negative weight of each row (default: all 1).
        classes: Digits a cell may predict (default: those in its weighted labels);
            the others get no logit.
        n_classes: Number of classes.
        max_iter: Iteration cap per cell.
        tol: Gradient tolerance (max-abs) of the mean objective.
        history: L-BFGS memory (correction pairs).
        max_ls: Line-search trials per iteration.
        max_bytes: Working-memory budget; blocks are solved in chunks that fit it.

    Returns:
        Weights ``W`` and intercepts ``b`` per block, strength and task, with the
        iteration count and convergence of each cell.

    >>> x = torch.randn(1, 60, 3, generator=torch.Generator().manual_seed(0)); y = (x[..., :1] > 0).long()
    >>> res = fit_multinomial(x, y, [1.0], n_classes=2)
    >>> tuple(res.W.shape), bool(res.converged.all())
    ((1, 1, 1, 3, 2), True)
    """
    ones = torch.ones(*x.shape[:2], 1, device=x.device, dtype=x.dtype)
    return _fit_augmented(
        torch.cat([x, ones], -1),
        labels,
        Cs,
        sample_weight=sample_weight,
        classes=classes,
        n_classes=n_classes,
        max_iter=max_iter,
        tol=tol,
        history=history,
        max_ls=max_ls,
        max_bytes=max_bytes,
    )


def _fit_augmented(
    x: Float[Tensor, "block problem d_model_1"],
    labels: Int[Tensor, "block problem task"],
    Cs: Sequence[float],
    *,
    sample_weight: Float[Tensor, "block problem"] | None,
    classes: Bool[Tensor, "block task digit"] | None,
    n_classes: int,
    max_iter: int,
    tol: float,
    history: int,
    max_ls: int,
    max_bytes: int,
) -> SolverResult:
    """:func:`fit_multinomial` on features whose last column is the intercept's (all ones)."""
    nb, n, dim = x.shape[0], x.shape[1], x.shape[2] - 1
    n_tasks = labels.shape[2]
    n_c = len(Cs)
    if n_c == 0 or any(not (c > 0 and math.isfinite(c)) for c in Cs):
        raise LensDigitsError(f"Cs must be positive finite numbers, got {list(Cs)}")
    dev, dt = x.device, x.dtype
    labels = labels.to(dev)
    sw = torch.ones(nb, n, device=dev, dtype=dt) if sample_weight is None else sample_weight.to(dev, dt)
    sw_sum = sw.sum(1)
    if bool((sw_sum <= 0).any()):
        raise LensDigitsError("every block needs at least one row with positive weight")
    w = sw / sw_sum[:, None]
    if classes is None:
        onehot = torch.nn.functional.one_hot(labels, n_classes)  # (B, n, task, k)
        classes = (onehot * (sw > 0)[:, :, None, None]).any(1)
    classes = classes.to(dev)
    m = n_c * n_tasks
    lam = 1.0 / (torch.tensor(list(Cs), dtype=torch.float64, device=dev)[None, :] * sw_sum.double()[:, None])  # (B, C)
    lam = lam[:, :, None].expand(nb, n_c, n_tasks).reshape(nb, m)
    y = labels[:, :, None, :].expand(nb, n, n_c, n_tasks).reshape(nb, n, m)
    mask = classes[:, None].expand(nb, n_c, n_tasks, n_classes).reshape(nb, m, n_classes)

    # Memory per block: parameters, gradients and 2 * history pairs, plus logits-sized temporaries.
    per_block = 4 * ((2 * history + 8) * (dim + 1) * m * n_classes + 6 * n * m * n_classes + n * (dim + 1))
    chunk = max(1, int(max_bytes // max(per_block, 1)))
    theta = torch.empty(nb, dim + 1, m, n_classes, device=dev, dtype=dt)
    n_iter = torch.empty(nb, m, dtype=torch.long, device=dev)
    converged = torch.empty(nb, m, dtype=torch.bool, device=dev)
    for s in range(0, nb, chunk):
        sl = slice(s, s + chunk)
        theta[sl], n_iter[sl], converged[sl] = _solve_chunk(x[sl], y[sl], w[sl], lam[sl], mask[sl], max_iter, tol, history, max_ls)
    theta = theta.view(nb, dim + 1, n_c, n_tasks, n_classes).permute(0, 2, 3, 1, 4)  # (B, C, task, d+1, k)
    return SolverResult(
        theta[..., :dim, :].contiguous(),
        theta[..., dim, :].contiguous(),
        n_iter.view(nb, n_c, n_tasks),
        converged.view(nb, n_c, n_tasks),
    )


# ---- fitted probes --------------------------------------------------------------------------------


@dataclass
class ProbeWeights:
    """A fitted probe set: one 10-way classifier per (group, layer, place).

    Logits are ``((resid - mean) / std) @ W + b``; :meth:`raw` folds the
    standardisation in, giving weights that act on the raw residual (for example
    to compare a digit direction with the unembedding).

    Attributes:
        W: Weights in standardised space.
        b: Intercepts.
        mean: Train mean of each feature.
        std: Train standard deviation of each feature (1 where it was 0).
        classes: Digits each probe may predict (those seen in its train labels).
        C: The inverse regularisation strength chosen on validation problems.
    """

    W: Float[Tensor, "group layer place d_model digit"]
    b: Float[Tensor, "group layer place digit"]
    mean: Float[Tensor, "group layer d_model"]
    std: Float[Tensor, "group layer d_model"]
    classes: Bool[Tensor, "group place digit"]
    C: Float[Tensor, "group layer place"]

    def raw(self) -> tuple[Float[Tensor, "group layer place d_model digit"], Float[Tensor, "group layer place digit"]]:
        """Weights and intercepts acting on the raw residual: ``resid @ W_raw + b_raw``."""
        w_raw = self.W / self.std[:, :, None, :, None]
        b_raw = self.b - torch.einsum("gld,glpdk->glpk", self.mean, w_raw)
        return w_raw, b_raw

    def logits(self, resid: Float[Tensor, "problem layer d_model"], group: int) -> Float[Tensor, "problem layer place digit"]:
        """Logits of every probe of ``group`` on residuals at the last prompt position.

        Digits a probe may not predict get a very negative logit.
        """
        x = ((resid.to(self.W) - self.mean[group]) / self.std[group]).transpose(0, 1)  # (L, n, d)
        n_layers, n, _ = x.shape
        n_places = self.W.shape[2]
        w = self.W[group].permute(0, 2, 1, 3).reshape(n_layers, -1, n_places * N_DIGITS)  # (L, d, place*k)
        z = torch.baddbmm(self.b[group].reshape(n_layers, 1, -1), x, w).view(n_layers, n, n_places, N_DIGITS)
        return z.masked_fill(~self.classes[group][None, None], _NEG).transpose(0, 1)

    def to(self, device: str | torch.device) -> "ProbeWeights":
        """A copy on ``device``."""
        return ProbeWeights(*(t.to(device) for t in (self.W, self.b, self.mean, self.std, self.classes, self.C)))


@register_decoder
class LinearProbe(Decoder):
    """10-way linear probes per digit place, for every layer, chosen on validation problems.

    ``correct`` for target ``answer`` is "every place right" (the whole number,
    leading zeros included); for target ``first`` it is "every place the first
    answer token covers right" (see :func:`first_token_digits`). Metrics per
    cell: ``chance`` (accuracy of always answering the most common label of the
    scale's train problems), ``control`` (accuracy of the same recipe on the
    control task, see the module docstring) and ``selectivity`` (accuracy
    minus control). The ``place`` breakdown gives the same per digit place.

    After :meth:`fit`, :attr:`weights` holds the probes (:class:`ProbeWeights`),
    :attr:`control_weights` the control probes and :attr:`group_scales` the
    scales of each group.

    >>> import lens_digits as ld
    >>> grid = ld.run_sweep(ld.testing.tiny_model(), scales=[1], n_per_scale=40, methods=["probe"], target="first")
    >>> sorted(grid.to_dataframe()["place"].unique())
    ['all', 'tens', 'units']
    """

    name = "probe"
    targets = ("first", "answer")

    def __init__(
        self,
        scope: Literal["per_scale", "pooled"] = "per_scale",
        Cs: Sequence[float] = DEFAULT_CS,
        seed: int = 0,
        max_iter: int = 300,
        tol: float = 1e-4,
        device: str | torch.device | None = None,
        *,
        control: bool = True,
        history: int = 10,
        max_bytes: int = 4 * 2**30,
    ) -> None:
        """Set up an unfitted probe.

        Args:
            scope: ``per_scale``: separate probes for each digit scale; ``pooled``:
                one probe set fitted on all scales (evaluated per scale).
            Cs: Inverse L2 strengths to choose from (scikit-learn's ``C``).
            seed: Seed of the control task's lookup tables.
            max_iter: L-BFGS iteration cap per probe.
            tol: Stop a probe when the max-abs gradient of its mean objective is below this.
            device: Where to fit and score (default: where the train residuals are).
            control: Also fit probes on the control task (doubles the work).
            history: L-BFGS memory.
            max_bytes: Working-memory budget of the solver; layers are solved in chunks that fit it.
        """
        if scope not in ("per_scale", "pooled"):
            raise LensDigitsError(f"scope must be 'per_scale' or 'pooled', got {scope!r}")
        cs = sorted({float(c) for c in Cs})
        if not cs or any(not (c > 0 and math.isfinite(c)) for c in cs):
            raise LensDigitsError(f"Cs must be positive finite numbers, got {list(Cs)}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise LensDigitsError(f"max_iter must be a positive integer, got {max_iter!r}")
        if not tol > 0:
            raise LensDigitsError(f"tol must be positive, got {tol!r}")
        if not isinstance(history, int) or history < 1:
            raise LensDigitsError(f"history must be a positive integer, got {history!r}")
        self.scope = scope
        self.Cs = cs
        self.seed = int(seed)
        self.max_iter = max_iter
        self.tol = float(tol)
        self.device = None if device is None else torch.device(device)
        self.control = bool(control)
        self.history = history
        self.max_bytes = int(max_bytes)
        self._weights: ProbeWeights | None = None
        self._control: ProbeWeights | None = None
        self.group_scales: list[list[int]] = []
        self.n_places: list[int] = []
        self.fit_info: dict[str, Any] = {}
        self.control_perm: list[int] | None = None
        self.train_labels: list[tuple[int, str, int]] = []

    # ---- fitted state ------------------------------------------------------------------------

    @property
    def weights(self) -> ProbeWeights:
        """The fitted probes (raises before :meth:`fit`)."""
        if self._weights is None:
            raise LensDigitsError("the probe is not fitted yet: call fit(train, val) or LinearProbe.load(path)")
        return self._weights

    @property
    def control_weights(self) -> ProbeWeights | None:
        """The control-task probes (None when ``control=False``)."""
        self.weights  # noqa: B018 - raise if unfitted
        return self._control

    @property
    def place_names(self) -> list[str]:
        """Names of the probed places, units first."""
        return [place_name(p) for p in range(self.weights.W.shape[2])]

    def group_of(self, problems: Sequence[Problem]) -> list[int]:
        """Index of the probe group that reads each problem."""
        index = {s: g for g, scales in enumerate(self.group_scales) for s in scales}
        if self.scope == "pooled":
            return [0] * len(problems)
        missing = sorted({p.scale for p in problems} - set(index))
        if missing:
            raise LensDigitsError(f"no probe was fitted for digit scale(s) {missing}; fitted scales: {sorted(index)}")
        return [index[p.scale] for p in problems]

    # ---- fit -------------------------------------------------------------------------------------

    def fit(self, train: ResidualSet, val: ResidualSet) -> None:
        """Fit every probe on ``train`` and choose each one's C on ``val``."""
        if len(train) == 0:
            raise LensDigitsError("probes need train problems; the train split is empty")
        device = self.device or train.resid.device
        scales = sorted({p.scale for p in train.problems})
        self.group_scales = [scales] if self.scope == "pooled" else [[s] for s in scales]
        self.n_places = []
        n_groups, n_layers, dim = len(self.group_scales), train.n_layers, train.resid.shape[-1]
        tr_group = torch.tensor(self.group_of(train.problems))
        val_keep = [i for i, p in enumerate(val.problems) if any(p.scale in s for s in self.group_scales)]
        val = val.select(val_keep)
        va_group = torch.tensor(self.group_of(val.problems), dtype=torch.long)
        for g in range(n_groups):
            answers = [p.answer for i, p in enumerate(train.problems) if tr_group[i] == g]
            answers += [p.answer for i, p in enumerate(val.problems) if va_group[i] == g]
            self.n_places.append(max(len(answer_digits(a)) for a in answers))
        n_places = max(self.n_places)
        n_tasks = 2 if self.control else 1

        # Standardised train features, groups padded to the largest with zero-weight rows.
        rows = [torch.nonzero(tr_group == g)[:, 0] for g in range(n_groups)]
        n_max = max(len(r) for r in rows)
        x = torch.zeros(n_groups, n_layers, n_max, dim + 1, device=device)  # last column: the intercept's ones
        x[..., dim] = 1
        sw = torch.zeros(n_groups, n_max, device=device)
        labels = torch.zeros(n_groups, n_max, n_tasks * n_places, dtype=torch.long)
        mean = torch.zeros(n_groups, n_layers, dim, device=device)
        std = torch.ones(n_groups, n_layers, dim, device=device)
        tr_labels = digit_labels([p.answer for p in train.problems], n_places)
        self.control_perm = digit_permutation(self.seed) if self.control else None
        tr_control = control_labels(train.problems, self.control_perm, n_places) if self.control_perm is not None else None
        self.train_labels = [(p.scale, p.answer, k) for p, k in zip(train.problems, first_token_digits(train), strict=True)]
        for g, r in enumerate(rows):
            feats = train.resid[r.to(train.resid.device), :, 0, :].to(device).transpose(0, 1)  # (L, n_g, d)
            stats = [torch.var_mean(layer.double(), dim=0, correction=0) for layer in feats]  # float64, a layer at a time
            sd, mu = torch.stack([v for v, _ in stats]).sqrt(), torch.stack([m for _, m in stats])
            sd = torch.where(sd < 10 * torch.finfo(torch.float64).eps, torch.ones_like(sd), sd)
            mean[g], std[g] = mu.float(), sd.float()
            x[g, :, : len(r), :dim] = (feats - mean[g][:, None]) / std[g][:, None]
            sw[g, : len(r)] = 1
            labels[g, : len(r), :n_places] = tr_labels[r]
            if tr_control is not None:
                labels[g, : len(r), n_places:] = tr_control[r]
            del feats
        classes = torch.zeros(n_groups, n_tasks * n_places, N_DIGITS, dtype=torch.bool)
        for g, r in enumerate(rows):
            classes[g] = torch.nn.functional.one_hot(labels[g, : len(r)], N_DIGITS).any(0)

        res = _fit_augmented(
            einops.rearrange(x, "group layer n d -> (group layer) n d"),  # one block per (group, layer)
            einops.repeat(labels, "group n task -> (group layer) n task", layer=n_layers),
            self.Cs,
            sample_weight=einops.repeat(sw, "group n -> (group layer) n", layer=n_layers),
            classes=einops.repeat(classes, "group task digit -> (group layer) task digit", layer=n_layers),
            n_classes=N_DIGITS,
            max_iter=self.max_iter,
            tol=self.tol,
            history=self.history,
            max_ls=25,
            max_bytes=self.max_bytes,
        )
        del x
        n_c = len(self.Cs)
        W = res.W.view(n_groups, n_layers, n_c, n_tasks * n_places, dim, N_DIGITS)
        b = res.b.view(n_groups, n_layers, n_c, n_tasks * n_places, N_DIGITS)
        classes = classes.to(device)

        # Choose C per (group, layer, place) on validation problems.
        chosen = torch.full((n_groups, n_layers, n_tasks * n_places), _default_c_index(self.Cs), dtype=torch.long)
        va_labels = digit_labels([p.answer for p in val.problems], n_places)
        no_val = []
        for g in range(n_groups):
            r = torch.nonzero(va_group == g)[:, 0]
            if len(r) == 0:
                no_val.append(self.group_scales[g])
                continue
            lab = va_labels[r]
            if self.control_perm is not None:
                lab = torch.cat([lab, control_labels([val.problems[i] for i in r.tolist()], self.control_perm, n_places)], 1)
            feats = val.resid[r.to(val.resid.device), :, 0, :].to(device)  # (n, L, d)
            xs = ((feats - mean[g]) / std[g]).transpose(0, 1)  # (L, n, d)
            w_all = einops.rearrange(W[g], "layer c task d digit -> layer d (c task digit)")
            z = torch.baddbmm(b[g].reshape(n_layers, 1, -1), xs, w_all).view(n_layers, len(r), n_c, -1, N_DIGITS)
            z = z.masked_fill(~classes[g][None, None, None], _NEG)
            lab = lab.to(device)[None, :, None, :].expand(n_layers, -1, n_c, -1)  # (L, n, C, J)
            acc = (z.argmax(-1) == lab).double().mean(1)  # (L, C, J)
            ce = (z.logsumexp(-1) - z.gather(-1, lab[..., None])[..., 0]).clamp(max=50).double().mean(1)
            tie = acc >= acc.amax(1, keepdim=True) - 1e-12
            chosen[g] = torch.where(tie, ce, torch.full_like(ce, math.inf)).argmin(1).cpu()
        if no_val:
            warnings.warn(
                f"no validation problems for scale group(s) {no_val}: using C={self.Cs[_default_c_index(self.Cs)]} there",
                stacklevel=2,
            )
        idx = chosen.to(device)
        w_sel = W.gather(2, idx[:, :, None, :, None, None].expand(-1, -1, 1, -1, dim, N_DIGITS))[:, :, 0]
        b_sel = b.gather(2, idx[:, :, None, :, None].expand(-1, -1, 1, -1, N_DIGITS))[:, :, 0]
        c_sel = torch.tensor(self.Cs, dtype=torch.float64, device=device)[idx]

        def part(t: int) -> ProbeWeights:
            sl = slice(t * n_places, (t + 1) * n_places)
            return ProbeWeights(
                w_sel[:, :, sl].contiguous(),
                b_sel[:, :, sl].contiguous(),
                mean,
                std,
                classes[:, sl].contiguous(),
                c_sel[:, :, sl].contiguous(),
            )

        self._weights = part(0)
        self._control = part(1) if self.control else None
        iters = res.n_iter.view(n_groups, n_layers, n_c, n_tasks * n_places)
        conv = res.converged.view(n_groups, n_layers, n_c, n_tasks * n_places)
        self.fit_info = {
            "n_train": [len(r) for r in rows],
            "n_val": [int((va_group == g).sum()) for g in range(n_groups)],
            "n_fits": int(conv.numel()),
            "converged": int(conv.sum()),
            "hit_max_iter": int((~conv & (iters >= self.max_iter)).sum()),
            "stalled": int((~conv & (iters < self.max_iter)).sum()),
            "mean_iter": round(float(iters.float().mean()), 1),
            "max_iter_used": int(iters.max()),
        }
        if self.fit_info["hit_max_iter"]:
            warnings.warn(
                f"{self.fit_info['hit_max_iter']} of {conv.numel()} probe fits (all C, layers, places) reached "
                f"max_iter={self.max_iter} before max|grad| <= {self.tol}; C is still chosen on validation problems, "
                "raise max_iter for tighter fits",
                stacklevel=2,
            )

    # ---- score -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def predict(self, data: ResidualSet, control: bool = False) -> Int[Tensor, "problem layer place"]:
        """Predicted digit of every place, units first, for every problem and layer."""
        weights = self.weights if not control else self.control_weights
        if weights is None:
            raise LensDigitsError("this probe was fitted with control=False")
        groups = torch.tensor(self.group_of(data.problems), dtype=torch.long)
        out = torch.zeros(len(data), data.n_layers, weights.W.shape[2], dtype=torch.long)
        if data.n_layers != weights.W.shape[1]:
            raise LensDigitsError(f"the probes have {weights.W.shape[1]} layers but the residuals {data.n_layers}")
        for g in range(len(self.group_scales)):
            r = torch.nonzero(groups == g)[:, 0]
            if len(r):
                feats = data.resid[r.to(data.resid.device), :, 0, :]
                out[r] = weights.logits(feats, g).argmax(-1).cpu()
        return out

    def score(self, data: ResidualSet, target: Target) -> Scores:
        """Per-problem, per-layer correctness with chance, control and a per-place breakdown.

        ``chance`` is 1 where the problem's label is the most common label among
        the train problems of its scale (so a cell's mean is the accuracy of always
        answering that label); ``control`` is the control probes' accuracy on the
        control task's test labels; ``selectivity`` is accuracy minus control.
        """
        if target not in self.targets:
            raise LensDigitsError(f"unknown target {target!r}; probes support {list(self.targets)}")
        n, n_layers = len(data), data.n_layers
        n_places = self.weights.W.shape[2]
        lengths = [len(answer_digits(p.answer)) for p in data.problems]
        train_answers = [a for _, a, _ in self.train_labels]
        width = max([n_places, *lengths, *(len(answer_digits(a)) for a in train_answers)])
        labels = digit_labels([p.answer for p in data.problems], width)  # (n, width)
        pred = torch.zeros(n, n_layers, width, dtype=torch.long)
        pred[..., :n_places] = self.predict(data)
        groups = self.group_of(data.problems)
        ctrl_ok = None
        if self._control is not None and self.control_perm is not None:
            ctrl = torch.zeros_like(pred)
            ctrl[..., :n_places] = self.predict(data, control=True)
            ctrl_labels = labels.clone()
            ctrl_labels[:, :n_places] = control_labels(data.problems, self.control_perm, n_places)
            ctrl_ok = ctrl == ctrl_labels[:, None]  # (n, L, width)
        covered = _covered(target, lengths, first_token_digits(data) if target == "first" else None, width)
        scales = [p.scale for p in data.problems]
        tr_scales = [s for s, _, _ in self.train_labels]
        tr_labels = digit_labels(train_answers, width)
        tr_lengths = [len(answer_digits(a)) for a in train_answers]
        tr_covered = _covered(target, tr_lengths, [k for _, _, k in self.train_labels] if target == "first" else None, width)

        def scores(cover: Tensor, tr_cover: Tensor, applies: Tensor | None = None) -> Scores:
            ok = ((pred == labels[:, None]) | ~cover[:, None]).all(-1)  # (n, L)
            majority = _majority(tr_labels, tr_cover, tr_scales)
            keys = [tuple(row[c].tolist()) for row, c in zip(labels, cover, strict=True)]
            chance = torch.tensor([float(majority.get(s) == k) for k, s in zip(keys, scales, strict=True)])
            metrics = {"chance": chance[:, None].expand(n, n_layers).clone()}
            if ctrl_ok is not None:
                c_ok = (ctrl_ok | ~cover[:, None]).all(-1)
                metrics["control"] = c_ok.float()
                metrics["selectivity"] = ok.float() - c_ok.float()
            return Scores(ok, metrics, applies=applies)

        main = scores(covered, tr_covered)
        group_places = torch.tensor(self.n_places)[torch.tensor(groups, dtype=torch.long)]  # (n,)
        places = {}
        for p in range(n_places):
            cover = torch.zeros(n, width, dtype=torch.bool)
            cover[:, p] = True
            tr_cover = torch.zeros(len(train_answers), width, dtype=torch.bool)
            tr_cover[:, p] = True
            places[place_name(p)] = scores(cover, tr_cover, applies=group_places > p)
        main.breakdown = {"place": places}
        return main

    # ---- settings, save, load --------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """Recipe, groups and (after fitting) the chosen C of each probe, JSON-ready."""
        out: dict[str, Any] = {
            "scope": self.scope,
            "Cs": self.Cs,
            "seed": self.seed,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "control": self.control,
            "history": self.history,
        }
        if self._weights is not None:
            out["group_scales"] = self.group_scales
            out["n_places"] = self.n_places
            out["places"] = self.place_names
            out["chosen_C"] = self._weights.C.cpu().tolist()  # [group][layer][place]
            if self._control is not None:
                out["control_chosen_C"] = self._control.C.cpu().tolist()
                out["control_perm"] = self.control_perm
            out["fit"] = self.fit_info
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``probe.safetensors`` (tensors) and ``probe.json`` (settings) into folder ``path``."""
        from safetensors.torch import save_file

        weights = self.weights
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(weights, name).detach().cpu().contiguous() for name in ("W", "b", "mean", "std", "classes", "C")}
        if self._control is not None:
            for name in ("W", "b", "classes", "C"):
                tensors[f"control.{name}"] = getattr(self._control, name).detach().cpu().contiguous()
        save_file(tensors, str(folder / "probe.safetensors"))
        meta = {"format": _FORMAT} | self.settings() | {"train_labels": [list(t) for t in self.train_labels]}
        (folder / "probe.json").write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device | None = None) -> "LinearProbe":
        """Restore a probe written by :meth:`save`; it scores exactly as the saved one."""
        from safetensors.torch import load_file

        folder = Path(path)
        if not (folder / "probe.json").is_file() or not (folder / "probe.safetensors").is_file():
            raise LensDigitsError(f"{str(path)!r} is not a saved probe: it needs probe.json and probe.safetensors")
        meta = json.loads((folder / "probe.json").read_text())
        if meta.get("format") != _FORMAT:
            hint = (
                "; it was saved with the earlier shuffled-label control: fit the probe again"
                if meta.get("format") == "lens_digits.probe/1"
                else ""
            )
            raise LensDigitsError(f"{str(path)!r} holds format {meta.get('format')!r}, not {_FORMAT!r}{hint}")
        probe = cls(
            meta["scope"],
            meta["Cs"],
            meta["seed"],
            meta["max_iter"],
            meta["tol"],
            device,
            control=meta["control"],
            history=meta["history"],
        )
        t = load_file(str(folder / "probe.safetensors"), device=str(device or "cpu"))
        probe._weights = ProbeWeights(t["W"], t["b"], t["mean"], t["std"], t["classes"], t["C"])
        if "control.W" in t:
            probe._control = ProbeWeights(t["control.W"], t["control.b"], t["mean"], t["std"], t["control.classes"], t["control.C"])
            probe.control_perm = [int(d) for d in meta["control_perm"]]
        probe.train_labels = [(int(s), str(a), int(k)) for s, a, k in meta["train_labels"]]
        probe.group_scales = [list(s) for s in meta["group_scales"]]
        probe.n_places = list(meta["n_places"])
        probe.fit_info = dict(meta.get("fit", {}))
        return probe

    def __repr__(self) -> str:
        """Recipe and fitted state."""
        fitted = f", groups={self.group_scales}, places={self.n_places}" if self._weights is not None else ", unfitted"
        return f"LinearProbe(scope={self.scope!r}, Cs={self.Cs}{fitted})"


def _covered(target: str, lengths: Sequence[int], first_digits: Sequence[int] | None, width: int) -> Bool[Tensor, "problem place"]:
    """Places a target reads: all (``answer``), or the leading digits the first token holds (``first``)."""
    n = len(lengths)
    if first_digits is None:
        return torch.ones(n, width, dtype=torch.bool)
    k, length = torch.tensor(list(first_digits), dtype=torch.long), torch.tensor(list(lengths), dtype=torch.long)
    place = torch.arange(width)[None]
    return (place < length[:, None]) & (place >= (length - k)[:, None])


def _majority(labels: Tensor, cover: Tensor, scales: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """The most common covered label of each scale's train problems (ties: the smallest)."""
    counts: dict[int, Counter[tuple[int, ...]]] = {}
    for row, c, s in zip(labels, cover, scales, strict=True):
        counts.setdefault(s, Counter())[tuple(row[c].tolist())] += 1
    return {s: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for s, c in counts.items()}


def _default_c_index(cs: Sequence[float]) -> int:
    """Index of the C nearest 1 (on a log scale), used where no validation problems exist."""
    return min(range(len(cs)), key=lambda i: abs(math.log(cs[i])))
