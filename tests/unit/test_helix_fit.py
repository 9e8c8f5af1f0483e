"""The helix fit against scikit-learn and against residuals built with known periods."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

from lens_digits.errors import LensDigitsError, NonFiniteError
from lens_digits.methods.probes.helix import check_periods, fit_number, number_basis


def helix_residuals(n, periods, d_model=48, noise=0.05, seed=0):
    """Residuals B(n) C + noise with a random C: a number written on a helix of ``periods``."""
    gen = torch.Generator().manual_seed(seed)
    basis = number_basis(n, periods).float()
    basis[:, 0] /= 100  # the linear term on the scale of the circles
    coef = torch.randn(basis.shape[1], d_model, generator=gen)
    return basis @ coef + noise * torch.randn(len(n), d_model, generator=gen) + 3.0


def split(n_total=100, seed=0):
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return order[:70], order[70:]


def test_the_true_period_set_fits_best_and_the_shuffled_control_reads_nothing():
    n = torch.arange(100)
    x = helix_residuals(n, [5, 10])
    train, test = split()
    r2 = {}
    for periods in ([5, 10], [3, 7], [2, 10], [5, 100], [4, 9]):
        fit = fit_number(x[train], n[train], periods, k=20)
        r2[tuple(periods)] = float(fit.r2(x[test], n[test]).mean())
    assert r2[(5, 10)] > 0.98
    assert all(v < r2[(5, 10)] - 0.1 for k, v in r2.items() if k != (5, 10)), r2
    shuffled = n[train][torch.randperm(len(train), generator=torch.Generator().manual_seed(1))]
    control = fit_number(x[train], shuffled, [5, 10], k=20)
    assert float(control.r2(x[test], n[test]).mean()) < 0.1
    fit = fit_number(x[train], n[train], [5, 10], k=20)
    assert torch.equal(fit.decode(x[test], torch.arange(100)), n[test])  # nearest point on the fitted helix
    assert (control.decode(x[test], torch.arange(100)) == n[test]).float().mean() < 0.2


@pytest.mark.parametrize("kind", ["helix", "circle", "polynomial"])
def test_pca_and_least_squares_equal_scikit_learn(kind):
    n = torch.arange(100)
    x = helix_residuals(n, [2, 5, 10, 100], noise=0.3)
    train, test = split(seed=3)
    fit = fit_number(x[train], n[train], (2, 5, 10, 100), kind, k=12, n_max=99)
    pca = PCA(n_components=12, svd_solver="full").fit(x[train].double().numpy())
    basis = number_basis(n, (2, 5, 10, 100), kind, 99).numpy()
    reg = LinearRegression().fit(basis[train], pca.transform(x[train].double().numpy()))
    z_test = pca.transform(x[test].double().numpy())
    pred = reg.predict(basis[test])
    want = r2_score(z_test, pred, multioutput="variance_weighted")
    assert float(fit.r2(x[test], n[test]).mean()) == pytest.approx(want, abs=1e-8)
    # the reconstruction back in the residual space is the same whatever the components' signs
    np.testing.assert_allclose(fit.reconstruct(n[test]).numpy(), pca.inverse_transform(pred), atol=1e-8)


def test_the_pca_size_is_capped_by_the_data_and_bad_input_is_refused():
    n = torch.arange(30)
    x = helix_residuals(n, [10], d_model=16)
    assert fit_number(x, n, [10], k=100).components.shape == (16, 16)
    assert fit_number(x[:9], n[:9], [10], k=100).components.shape == (16, 8)
    with pytest.raises(LensDigitsError, match="at least two"):
        fit_number(x[:1], n[:1], [10])
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="not finite"):
        fit_number(bad, n, [10])


def test_periods_and_bases():
    assert check_periods([2, 2.5, 2]) == (2.0, 2.5)
    assert check_periods("100,10") == (100.0, 10.0)
    for bad in ([], [0], [-1], "a,b", [float("inf")]):
        with pytest.raises(LensDigitsError, match="periods"):
            check_periods(bad)
    n = torch.arange(7)
    assert number_basis(n, [2, 5]).shape == (7, 5)
    assert number_basis(n, [2, 5], "circle").shape == (7, 4)
    poly = number_basis(n, [2, 5], "polynomial", 6)
    assert poly.shape == (7, 5) and torch.allclose(poly[:, 1], (2 * n / 6.0 - 1).double() ** 2)


def test_the_circle_projection_puts_an_exact_helix_on_its_fitted_circle():
    from lens_digits.results.number_figures import circle_projection

    n = torch.arange(100)
    x = helix_residuals(n, [5, 10], noise=0.0)
    fit = fit_number(x, n, [5, 10], k=20)
    fig = circle_projection(fit, x, n, 10)
    points = np.stack([np.asarray(fig.data[1].x), np.asarray(fig.data[1].y)], 1)
    centre = -fit.basis_mean[3:5].numpy()  # the circle of period 10 is the fit's 4th and 5th functions, centred
    np.testing.assert_allclose(np.linalg.norm(points - centre, axis=1), 1.0, atol=1e-4)
    angles = np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0]) % (2 * np.pi)
    np.testing.assert_allclose(np.cos(angles), np.cos(2 * np.pi * n.numpy() / 10), atol=1e-4)
    with pytest.raises(LensDigitsError, match="no circle of period 3"):
        circle_projection(fit, x, n, 3)
