"""The helix fit of a number's residuals (Kantamneni and Tegmark 2025): PCA, then least squares onto a Fourier basis of n.

Residuals ``x`` of numbers ``n`` (train problems) are centred, projected onto
their top ``k`` principal components (``k`` = 100, or fewer where ``d_model`` or
the train problems are fewer), and fitted by least squares onto a basis of n,
centred with its train mean (so the fit has an intercept):

- ``helix``: ``[n, cos(2 pi n / T), sin(2 pi n / T) for T in periods]``;
- ``circle``: the same without the linear term;
- ``polynomial``: ``[x, x^2, ..., x^m]`` with ``x = 2 n / n_max - 1`` (with the intercept, the same polynomials as powers
  of n, better conditioned),
  ``m`` the helix's dimension.

A fit gives a held-out R² in the PCA space (:meth:`NumberFit.r2`, scikit-learn's
``r2_score`` with ``multioutput="variance_weighted"``), the number it decodes
(the candidate n whose fitted point is nearest, :meth:`NumberFit.decode`) and
the residual it reconstructs for any n (:meth:`NumberFit.reconstruct`), which is
what the causal score patches into the model.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from lens_digits.errors import LensDigitsError, NonFiniteError

__all__ = ["BASES", "DEFAULT_PERIODS", "PCA_SIZE", "NumberFit", "check_periods", "fit_number", "number_basis", "pca"]

DEFAULT_PERIODS = (2.0, 5.0, 10.0, 100.0)
"""The periods of Kantamneni and Tegmark's helix."""

PCA_SIZE = 100
"""Principal components the helix is fitted in (fewer where ``d_model`` or the train problems are fewer)."""

BASES = ("helix", "circle", "polynomial")

Basis = Literal["helix", "circle", "polynomial"]


def check_periods(periods: Sequence[float | int] | str) -> tuple[float, ...]:
    """Periods as positive finite floats, from a list or a string such as ``"2,5,10,100"``.

    Returns:
        The periods, in the order given, duplicates dropped.

    Raises:
        LensDigitsError: A period is not a positive finite number, or there is none.

    >>> check_periods("2,5,10")
    (2.0, 5.0, 10.0)
    """
    items = [p for p in periods.split(",") if p.strip()] if isinstance(periods, str) else list(periods)
    try:
        out = tuple(dict.fromkeys(float(p) for p in items))
    except (TypeError, ValueError):
        raise LensDigitsError(f"periods must be positive numbers such as 2,5,10,100; got {periods!r}") from None
    if not out or any(not (p > 0 and math.isfinite(p)) for p in out):
        raise LensDigitsError(f"periods must be positive finite numbers such as 2,5,10,100; got {periods!r}")
    return out


def number_basis(
    n: Tensor, periods: Sequence[float | int], kind: Basis = "helix", n_max: float | int = 1.0
) -> Float[Tensor, "problem basis"]:
    """The basis functions of ``n``, one column each (float64), uncentred.

    ``n_max`` scales the polynomial basis (``x = 2 n / n_max - 1``); the helix and circle ignore it.

    Returns:
        ``helix``: ``1 + 2 * len(periods)`` columns; ``circle``: ``2 * len(periods)``; ``polynomial``: as many as the helix.

    Raises:
        LensDigitsError: ``kind`` is not one of :data:`BASES`.

    >>> number_basis(torch.tensor([0, 5]), [10]).round(decimals=6).tolist()
    [[0.0, 1.0, 0.0], [5.0, -1.0, 0.0]]
    """
    n = n.to(torch.float64)
    if kind == "polynomial":
        x = 2 * n / max(float(n_max), 1.0) - 1  # on [-1, 1]: the same polynomials (with the intercept), far better conditioned
        return torch.stack([x**p for p in range(1, 2 + 2 * len(periods))], dim=1)
    if kind not in BASES:
        raise LensDigitsError(f"unknown basis {kind!r}; choose one of {list(BASES)}")
    cols = [n] if kind == "helix" else []
    for period in periods:
        angle = 2 * math.pi * n / period
        cols += [angle.cos(), angle.sin()]
    return torch.stack(cols, dim=1)


def pca(x: Float[Tensor, "problem d_model"], k: int) -> tuple[Float[Tensor, " d_model"], Float[Tensor, "d_model k"]]:
    """The mean and top ``k`` principal directions of ``x`` (float64), as scikit-learn's ``PCA`` finds them (up to sign).

    Returns:
        ``(mean, components)``: the mean row and a ``d_model x k`` matrix of orthonormal columns, largest variance first.
    """
    x = x.to(torch.float64)
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, vh[:k].T


@dataclass
class NumberFit:
    """A least-squares map from a basis of n to a residual's top principal components.

    Attributes:
        mean: The train residuals' mean.
        components: The top principal directions, ``d_model x k``.
        coef: The fitted map, ``basis x k``.
        basis_mean: The train basis's mean (the fit is of centred basis onto centred components).
        periods: The periods of the basis.
        kind: The basis (``helix``, ``circle`` or ``polynomial``).
        n_max: The polynomial basis's scale.
    """

    mean: Float[Tensor, " d_model"]
    components: Float[Tensor, "d_model k"]
    coef: Float[Tensor, "basis k"]
    basis_mean: Float[Tensor, " basis"]
    periods: tuple[float, ...]
    kind: Basis
    n_max: float

    def project(self, x: Float[Tensor, "problem d_model"]) -> Float[Tensor, "problem k"]:
        """Residuals in the PCA space of the fit.

        Returns:
            ``(x - mean) @ components``, float64.
        """
        return (x.to(self.mean) - self.mean) @ self.components

    def predict(self, n: Tensor) -> Float[Tensor, "problem k"]:
        """The fitted point of each number in the PCA space.

        Returns:
            ``(B(n) - basis_mean) @ coef``.
        """
        return (number_basis(n.to(self.mean.device), self.periods, self.kind, self.n_max) - self.basis_mean) @ self.coef

    def reconstruct(self, n: Tensor) -> Float[Tensor, "problem d_model"]:
        """The residual the fit gives each number: its fitted point mapped back from the PCA space, plus the mean.

        Returns:
            ``mean + predict(n) @ components.T``, float64.
        """
        return self.mean + self.predict(n) @ self.components.T

    def r2(self, x: Float[Tensor, "problem d_model"], n: Tensor) -> Float[Tensor, " problem"]:
        """Per problem, its share of the held-out R² in the PCA space: the mean over problems is the R².

        R² = 1 - SS_res / SS_tot, summed over the components, with SS_tot about
        these problems' own mean (scikit-learn's ``r2_score(z, z_hat,
        multioutput="variance_weighted")``). Problem i's value is
        ``1 - ||z_i - z_hat_i||^2 / (SS_tot / n)``.

        Returns:
            One value per problem; NaN for all where the problems do not vary.
        """
        z = self.project(x)
        res = ((z - self.predict(n)) ** 2).sum(1)
        tot = ((z - z.mean(0)) ** 2).sum() / max(len(z), 1)
        if not float(tot) > 0:
            return torch.full((len(z),), math.nan, dtype=torch.float64)
        return 1 - res / tot

    def decode(self, x: Float[Tensor, "problem d_model"], candidates: Tensor) -> Tensor:
        """The candidate number whose fitted point is nearest each residual's projection.

        Returns:
            One number per residual (ties: the smaller).
        """
        z = self.project(x)
        points = self.predict(candidates)  # (c, k)
        dist = torch.cdist(z, points)  # (problem, c)
        return candidates.to(dist.device)[dist.argmin(1)]


def fit_number(
    x: Float[Tensor, "problem d_model"],
    n: Tensor,
    periods: Sequence[float | int] = DEFAULT_PERIODS,
    kind: Basis = "helix",
    k: int = PCA_SIZE,
    n_max: float | int | None = None,
) -> NumberFit:
    """Fit residuals ``x`` of numbers ``n``: PCA to ``min(k, d_model, problems - 1)`` components, then least squares.

    Returns:
        The fit (float64, on the CPU).

    Raises:
        LensDigitsError: Fewer than two problems.
        NonFiniteError: The residuals or the fit are not finite.

    >>> n = torch.arange(100)
    >>> x = number_basis(n, [10]).float() @ torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    >>> round(float(fit_number(x, n, [10]).r2(x, n).mean()), 6)
    1.0
    """
    if len(x) < 2:
        raise LensDigitsError(f"a number fit needs at least two train problems, got {len(x)}; use more problems (--n)")
    x = x.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError("the residuals a number fit reads are not finite (NaN or infinite); check the model's weights")
    size = max(1, min(int(k), x.shape[1], len(x) - 1))
    mean, components = pca(x, size)
    z = (x - mean) @ components
    n = n.to("cpu")
    scale = float(n.abs().max()) if n_max is None else float(n_max)
    basis = number_basis(n, periods, kind, scale)
    basis_mean = basis.mean(0)
    coef = torch.linalg.lstsq(basis - basis_mean, z, driver="gelsd").solution
    if not bool(torch.isfinite(coef).all()):
        raise NonFiniteError("the number fit is not finite; check the residuals and periods")
    return NumberFit(mean, components, coef, basis_mean, tuple(float(p) for p in periods), kind, scale)
