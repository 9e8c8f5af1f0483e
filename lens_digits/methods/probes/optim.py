"""A batched multinomial logistic-regression solver: many independent fits as one tensor program.

:func:`fit_multinomial` fits ``block x C x task`` regularised multinomial
logistic regressions at once with L-BFGS, each cell keeping its own curvature
history, step size and stopping rule, on whatever device the features are.
The linear probes fit every (scale group, layer, digit place, C) with one call;
anything else that needs many small convex fits can use it the same way.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from lens_digits.errors import LensDigitsError
from lens_digits.methods.probes.lbfgs import _solve_chunk
from lens_digits.methods.probes.rows import rotate

DEFAULT_MAX_BYTES = 2**29
"""The solver's smallest default working-memory budget (512 MiB); larger features raise it to their own size."""


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

    def summary(self, max_iter: int) -> dict[str, int | float]:
        """How the fits went, for ``run.json``.

        Returns:
            ``n_fits``, ``converged`` (reached the gradient tolerance), ``hit_max_iter``,
            ``stalled`` (stopped at the arithmetic's precision), ``mean_iter`` and ``max_iter_used``.
        """
        iters, conv = self.n_iter, self.converged
        return {
            "n_fits": int(conv.numel()),
            "converged": int(conv.sum()),
            "hit_max_iter": int((~conv & (iters >= max_iter)).sum()),
            "stalled": int((~conv & (iters < max_iter)).sum()),
            "mean_iter": round(float(iters.float().mean()), 1),
            "max_iter_used": int(iters.max()),
        }


def fit_multinomial(
    x: Float[Tensor, "block problem d_model"],
    labels: Int[Tensor, "block problem task"],
    Cs: Sequence[float],
    *,
    sample_weight: Float[Tensor, "block problem"] | None = None,
    classes: Bool[Tensor, "block task digit"] | None = None,
    n_classes: int = 10,
    max_iter: int = 100,
    tol: float = 1e-4,
    history: int = 10,
    max_ls: int = 25,
    max_bytes: int | None = None,
) -> SolverResult:
    """Fit ``block x len(Cs) x task`` multinomial logistic regressions at once.

    Each cell minimises scikit-learn's ``LogisticRegression(C=C, solver="lbfgs")``
    objective on its block's features and its task's labels: the weighted mean
    cross-entropy plus ``||W||^2 / (2 C sum(sample_weight))``, intercept not
    penalised.

    The cells share the tensor work: an iteration is two batched matrix
    products (logits along the search direction, then the gradient) covering
    every cell being fitted, whatever the line search does, since trial steps
    move the logits element-wise. Each cell keeps its own L-BFGS history (as
    scipy's L-BFGS-B, which scikit-learn calls), step size (Armijo backtracking)
    and stopping rule: it stops when ``max|gradient| <= tol`` (scikit-learn's
    ``gtol``), after ``max_iter`` iterations, when its line search finds no
    decrease it can tell from rounding, or after three steps in a row whose
    relative decrease is within rounding noise (``eps`` of the dtype: stalled at
    the precision of float32).

    What makes it fast at the small widths probes have (tested in ``tests/unit/test_optim.py``):

    - features up to :data:`~lens_digits.methods.probes.rows.PRECONDITION_MAX_DIM` wide are turned to
      the eigenvectors of each block's Gram matrix (the same fit, weights turned back at the end), where
      the curvature bound ``G / 2 + lam`` of the cross-entropy is diagonal and preconditions every
      cell: a residual stream's correlated features no longer slow the fit;
    - the strengths are solved one after another, strongest regularisation first, each starting
      where the previous C stopped;
    - running fits are laid out again in rows of one block's cells as others stop, so a block's
      slowest fit does not keep its finished ones in the work;
    - trailing rows of weight 0 (a smaller group's padding) are left out.

    Starting from zero with no randomness, the result is deterministic for a
    given device and thread count.

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
        max_bytes: Working-memory budget of the solver (turned features, parameters, gradients,
            L-BFGS history, logits); blocks are solved in chunks that fit it. Default: the size
            of ``x`` itself, or 512 MiB where that is larger (few chunks for small features).

    Returns:
        Weights ``W`` and intercepts ``b`` per block, strength and task, with the
        iteration count and convergence of each cell.

    >>> x = torch.randn(1, 60, 3, generator=torch.Generator().manual_seed(0)); y = (x[..., :1] > 0).long()
    >>> res = fit_multinomial(x, y, [1.0], n_classes=2)
    >>> tuple(res.W.shape), bool(res.converged.all())
    ((1, 1, 1, 3, 2), True)
    """
    ones = torch.ones(*x.shape[:2], 1, device=x.device, dtype=x.dtype)
    return fit_augmented(
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


def fit_augmented(
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
    max_bytes: int | None,
    progress: bool = False,
) -> SolverResult:
    """:func:`fit_multinomial` on features whose last column is the intercept's (all ones); ``progress`` shows iterations.

    Returns:
        Weights ``W`` and intercepts ``b`` per block, strength and task, with the
        iteration count and convergence of each cell.

    Raises:
        LensDigitsError: ``Cs`` is empty or holds a value that is not a positive finite number,
            or a block has no row with positive weight.
    """
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

    # Trailing rows of weight 0 (a smaller group's padding) are left out: blocks of one length are solved
    # together, in chunks within the working-memory budget.
    length = torch.where(sw > 0, torch.arange(1, n + 1, device=dev), 0).amax(1).cpu()
    budget = max(x.numel() * x.element_size(), DEFAULT_MAX_BYTES) if max_bytes is None else max_bytes
    plan = []
    cells = (dim + 1) * n_tasks * n_classes  # the parameters of one C's cells
    for size in sorted(set(length.tolist())):
        # Per block: its features turned, the parameters of every C, and for one C's cells the gradients,
        # 2 * history pairs and logits-sized temporaries.
        per_block = 4 * (size * (dim + 1) + dim * dim + (n_c + 2 * history + 8) * cells + 6 * size * n_tasks * n_classes)
        idx = (length == size).nonzero()[:, 0].to(dev)
        step = max(1, int(budget // per_block))
        plan += [(idx[i : i + step], size) for i in range(0, len(idx), step)]
    theta = torch.empty(nb, dim + 1, m, n_classes, device=dev, dtype=dt)
    n_iter = torch.empty(nb, m, dtype=torch.long, device=dev)
    converged = torch.empty(nb, m, dtype=torch.bool, device=dev)
    desc = "fitting probes (L-BFGS iterations)"
    order = sorted(range(n_c), key=lambda c: Cs[c])  # strongest regularisation first: each C starts where the last stopped
    for j, (idx, size) in enumerate(plan):
        xs, ws, ys = x[idx, :size], w[idx, :size], y[idx, :size]
        turned = rotate(xs, ws)
        vec, curv = None, None
        if turned is not None:
            xs, vec, curv = turned
        part = torch.empty(len(idx), dim + 1, m, n_classes, device=dev, dtype=dt)
        with tqdm(total=max_iter * n_c, desc=desc if len(plan) == 1 else f"{desc} {j + 1}/{len(plan)}", disable=not progress) as bar:
            prev = None
            for c in order:
                cs = slice(c * n_tasks, (c + 1) * n_tasks)
                prev, it, conv = _solve_chunk(
                    xs, ys[:, :, cs], ws, lam[idx, cs], mask[idx, cs], max_iter, tol, history, max_ls, bar, prev, curv
                )
                part[:, :, cs], n_iter[idx, cs], converged[idx, cs] = prev, it, conv
        if vec is not None:  # back from the turned features
            part[:, :dim] = torch.bmm(vec, part[:, :dim].reshape(-1, dim, m * n_classes)).view(-1, dim, m, n_classes)
        theta[idx] = part
    theta = theta.view(nb, dim + 1, n_c, n_tasks, n_classes).permute(0, 2, 3, 1, 4)  # (B, C, task, d+1, k)
    return SolverResult(
        theta[..., :dim, :].contiguous(),
        theta[..., dim, :].contiguous(),
        n_iter.view(nb, n_c, n_tasks),
        converged.view(nb, n_c, n_tasks),
    )
