"""Circular digit probes (Levy and Geva 2025): each digit place as a point on a circle.

A circular probe maps the residual linearly onto ``(cos, sin)`` of the angle
``2 * pi * d / 10`` of the digit ``d`` it reads, and predicts the digit whose
angle is nearest to the point it lands on. It tests whether a digit is written
as a *phase* (a base-10 rotation, as Fourier-feature accounts of arithmetic
say) rather than as ten separable directions.

Protocol: that of :class:`~lens_digits.methods.probes.linear.LinearProbe` (the same
residuals at the last prompt position, the same per-scale or pooled groups,
places, standardisation, control task, chance and choice of regularisation on
validation problems); only the fit differs. Each probe is a ridge regression,
minimising ``sum_i ||y_i - x_i W - b||^2 + alpha ||W||^2`` with the intercept
not penalised (scikit-learn's ``Ridge(alpha)``). It is solved exactly, in
closed form from one singular value decomposition per (group, layer) shared by
every place, the control task and every ``alpha``, so there is nothing to
converge. The fitted map is stored as 10-way weights ``W_circle @ U`` (``U``
holding each digit's ``(cos, sin)``), whose argmax is the nearest digit.
"""

import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lens_digits.errors import LensDigitsError
from lens_digits.methods.base import register_method
from lens_digits.methods.probes.linear import LinearProbe
from lens_digits.methods.probes.optim import SolverResult
from lens_digits.problems.digits import N_DIGITS

DEFAULT_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def digit_circle(dtype: torch.dtype = torch.float64, device: str | torch.device | None = None) -> Float[Tensor, "2 digit"]:
    """``(cos, sin)`` of ``2 * pi * d / 10`` for each digit ``d``, as the columns of a 2 x 10 matrix.

    Returns:
        The 2 x 10 matrix, in ``dtype`` on ``device``.

    >>> [round(x, 3) for x in digit_circle()[:, 5].tolist()]
    [-1.0, 0.0]
    """
    angle = 2 * math.pi * torch.arange(N_DIGITS, dtype=torch.float64) / N_DIGITS
    return torch.stack([angle.cos(), angle.sin()]).to(dtype=dtype, device=device)


def ridge(
    x: Float[Tensor, "problem d_model"],
    y: Float[Tensor, "problem output"],
    alphas: Sequence[float],
    sample_weight: Float[Tensor, " problem"] | None = None,
) -> tuple[Float[Tensor, "alpha d_model output"], Float[Tensor, "alpha output"]]:
    """Ridge regression with an unpenalised intercept, for several ``alphas`` at once (scikit-learn's ``Ridge``).

    Minimises ``sum_i w_i ||y_i - x_i W - b||^2 + alpha ||W||^2``: centre ``x``
    and ``y`` by their weighted means, take one SVD of the weighted, centred
    ``x``, and shrink each singular direction by ``s / (s^2 + alpha)``.

    Returns:
        The weights ``W`` and intercepts ``b``, one per alpha, in the order of ``alphas``.
    """
    w = torch.ones(x.shape[0], dtype=x.dtype, device=x.device) if sample_weight is None else sample_weight.to(x)
    total = w.sum()
    x_mean = (w[:, None] * x).sum(0) / total
    y_mean = (w[:, None] * y).sum(0) / total
    root = w.sqrt()[:, None]
    u, s, vh = torch.linalg.svd(root * (x - x_mean), full_matrices=False)
    uty = u.T @ (root * (y - y_mean))  # (k, output)
    alpha = torch.tensor(list(alphas), dtype=x.dtype, device=x.device)
    shrink = s[None, :] / (s[None, :] ** 2 + alpha[:, None])  # (alpha, k)
    W = torch.einsum("kd,ak,ko->ado", vh, shrink, uty)
    b = y_mean[None, :] - torch.einsum("d,ado->ao", x_mean, W)
    return W, b


@register_method
class CircularProbe(LinearProbe):
    """Per digit place, a ridge map onto the digit's point on a circle, for every layer (see the module docstring).

    Scores, metrics (``chance``, ``control``, ``selectivity``) and ``place``
    rows are those of :class:`~lens_digits.methods.probes.linear.LinearProbe`.

    >>> import lens_digits as ld
    >>> grid = ld.run_sweep(ld.testing.tiny_model(), scales=[1], n_per_scale=40, methods=["circular_probe"], target="first")
    >>> sorted(grid.to_dataframe()["place"].unique())
    ['all', 'tens', 'units']
    """

    name = "circular_probe"

    def __init__(
        self,
        scope: str = "per_scale",
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        seed: int = 0,
        device: str | torch.device | None = None,
        *,
        control: bool = True,
        progress: bool = False,
        **unused: Any,
    ) -> None:
        """Set up an unfitted circular probe.

        Args:
            scope: ``per_scale`` or ``pooled``, as for the linear probe.
            alphas: Ridge strengths to choose from on validation problems (scikit-learn's ``alpha``).
            seed: Seed of the control task's relabelling.
            device: Where to fit and score (default: where the train residuals are).
            control: Also fit probes on the control task.
            progress: Accepted for a uniform interface (the fit is one closed-form solve).
            unused: Settings of the linear probe's iterative solver, which this probe does not use.

        Raises:
            LensDigitsError: ``alphas`` is empty or holds a value that is not a positive finite number,
                or ``unused`` names a setting the linear probe does not have either.
        """
        strengths = sorted({float(a) for a in alphas})
        if not strengths or any(not (a > 0 and math.isfinite(a)) for a in strengths):
            raise LensDigitsError(f"alphas must be positive finite numbers, got {list(alphas)}")
        unknown = sorted(set(unused) - {"Cs", "max_iter", "tol", "history", "max_bytes"})
        if unknown:
            raise LensDigitsError(f"unknown circular probe setting(s) {unknown}")
        # Stored as C = 1 / alpha, so the linear probe's choice on validation (ties: smaller C) prefers the stronger ridge.
        super().__init__(scope, [1 / a for a in strengths], seed, device=device, control=control, progress=progress)  # type: ignore[arg-type]

    @property
    def alphas(self) -> list[float]:
        """The ridge strengths, ascending."""
        return sorted(1 / c for c in self.Cs)

    def solve(
        self,
        x: Float[Tensor, "block problem d_model_1"],
        labels: Int[Tensor, "block problem task"],
        sample_weight: Float[Tensor, "block problem"],
        classes: Bool[Tensor, "block task digit"],
    ) -> SolverResult:
        """Closed-form ridge fits onto each task's digit circle, one SVD per block, in float64.

        Returns:
            The 10-way weights and intercepts per block, strength (in the order of ``Cs``) and task, with
            zero iterations and every cell converged.
        """
        nb, _, dim1 = x.shape
        dim, n_tasks, n_c = dim1 - 1, labels.shape[2], len(self.Cs)
        dtype = torch.float64 if x.device.type == "cpu" else torch.float32
        circle = digit_circle(dtype, x.device)
        alphas = [1 / c for c in self.Cs]  # in the order of self.Cs
        W = torch.empty(nb, n_c, n_tasks, dim, N_DIGITS, device=x.device)
        b = torch.empty(nb, n_c, n_tasks, N_DIGITS, device=x.device)
        for block in range(nb):
            rows = sample_weight[block] > 0
            feats = x[block][rows][:, :dim].to(dtype)
            target = circle.T[labels[block].to(x.device)[rows]]  # (n, task, 2); rows is on x.device
            w, bias = ridge(feats, target.reshape(len(feats), n_tasks * 2), alphas, sample_weight[block][rows].to(dtype))
            W[block] = torch.einsum("adtc,ck->atdk", w.view(n_c, dim, n_tasks, 2), circle).float()
            b[block] = torch.einsum("atc,ck->atk", bias.view(n_c, n_tasks, 2), circle).float()
        return SolverResult(W, b, torch.zeros(nb, n_c, n_tasks, dtype=torch.long), torch.ones(nb, n_c, n_tasks, dtype=torch.bool))

    def settings(self) -> dict[str, Any]:
        """The linear probe's settings, with the ridge strengths (``alphas``, ``chosen_alpha``) in place of C.

        Returns:
            The settings, JSON-ready, without the iterative solver's.
        """
        out = super().settings()
        for key in ("max_iter", "tol", "history"):
            out.pop(key, None)
        out["alphas"] = self.alphas
        out["solver"] = "closed-form ridge (one SVD per group and layer)"
        for key in ("chosen_C", "control_chosen_C"):
            if key in out:  # [group][layer][place]
                out[key.replace("_C", "_alpha")] = [[[1 / c for c in places] for places in layers] for layers in out.pop(key)]
        return out

    @classmethod
    def _init_args(cls, meta: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments from saved settings.

        Returns:
            ``scope``, ``alphas``, ``seed`` and ``control`` by name.
        """
        return {"scope": meta["scope"], "alphas": [1 / c for c in meta["Cs"]], "seed": meta["seed"], "control": meta["control"]}

    def __repr__(self) -> str:
        """Recipe and fitted state.

        Returns:
            ``CircularProbe(...)`` with the scope, the alphas and, once fitted, the groups and places.
        """
        fitted = f", groups={self.group_scales}, places={self.n_places}" if self._weights is not None else ", unfitted"
        return f"CircularProbe(scope={self.scope!r}, alphas={self.alphas}{fitted})"
