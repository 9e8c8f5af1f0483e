"""The circular digit probe: its ridge solve against scikit-learn, what it reads, and its files."""

import math

import numpy as np
import pytest
import torch
from conftest import splits
from sklearn.linear_model import Ridge

import lens_digits as ld
from lens_digits.methods import CircularProbe, LinearProbe
from lens_digits.methods.probes.circular import digit_circle, ridge
from lens_digits.problems.digits import digit_labels
from lens_digits.problems.targets import EncodedProblem
from lens_digits.problems.tasks import Problem
from lens_digits.residuals.collect import ResidualSet


def test_ridge_equals_scikit_learn_with_weights_and_several_alphas():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 9, generator=gen, dtype=torch.float64) + 2.0
    y = torch.randn(60, 4, generator=gen, dtype=torch.float64)
    w = torch.rand(60, generator=gen, dtype=torch.float64) + 0.5
    W, b = ridge(x, y, [0.3, 3.0, 30.0], w)
    for i, alpha in enumerate([0.3, 3.0, 30.0]):
        ref = Ridge(alpha=alpha).fit(x.numpy(), y.numpy(), sample_weight=w.numpy())
        np.testing.assert_allclose(W[i].numpy(), ref.coef_.T, atol=1e-10)
        np.testing.assert_allclose(b[i].numpy(), ref.intercept_, atol=1e-10)


def circle_set(n_train=300, n_val=100, n_test=200, d_model=20, noise=0.3, layers=4, signal_layers=(2, 3), seed=0):
    """Two-digit answers whose digits are written as points on a circle (one plane per place) at ``signal_layers``."""
    gen = torch.Generator().manual_seed(seed)
    n = n_train + n_val + n_test
    answers = [str(v) for v in torch.randint(10, 100, (n,), generator=gen).tolist()]
    labels = digit_labels(answers, 2)
    planes = torch.linalg.qr(torch.randn(d_model, 4, generator=gen))[0].T.reshape(2, 2, d_model)  # place -> (cos, sin) directions
    circle = digit_circle(torch.float32)  # (2, 10)
    signal = sum(circle.T[labels[:, p]] @ planes[p] for p in range(2))  # (n, d)
    resid = noise * torch.randn(n, layers, 1, d_model, generator=gen)
    for layer in signal_layers:
        resid[:, layer, 0] += 3 * signal
    problems = [
        Problem(2, "add", i, 0, f"{i}+0=", a, s) for i, (a, s) in enumerate(zip(answers, splits(n_train, n_val, n_test), strict=True))
    ]
    encoded = [EncodedProblem((1,), (2, 3)) for _ in answers]
    return ResidualSet(resid, torch.zeros(n, 1, dtype=torch.long), problems, encoded, {})


def test_reads_digits_written_on_a_circle_and_nothing_where_there_are_none():
    data = circle_set()
    probe = CircularProbe(control=False)
    probe.fit(data.split("train"), data.split("val"))
    test = data.split("test")
    acc = probe.score(test, "answer").correct.float().mean(0)
    assert acc[2] > 0.95 and acc[3] > 0.95
    assert acc[0] < 0.1 and acc[1] < 0.1  # noise: about 1 in 100 two-digit answers
    assert probe.fit_info["converged"] == probe.fit_info["n_fits"], "a closed-form fit has nothing to converge"


def test_each_probe_is_scikit_learns_ridge_onto_the_circle():
    data = circle_set(noise=1.0, seed=1)
    probe = CircularProbe(alphas=[5.0], control=False)
    train, test = data.split("train"), data.split("test")
    probe.fit(train, data.split("val"))
    w = probe.weights
    circle = digit_circle(torch.float64)
    for layer in (1, 2):
        x = ((train.resid[:, layer, 0].double() - w.mean[0, layer].double()) / w.std[0, layer].double()).numpy()
        for place in range(2):
            labels = digit_labels([p.answer for p in train.problems], 2)[:, place]
            target = circle.T[labels].numpy()  # (n, 2): cos, sin
            ref = Ridge(alpha=5.0).fit(x, target)
            ours = (w.W[0, layer, place].double() @ circle.T / 5).numpy()  # back from 10-way weights to (cos, sin)
            np.testing.assert_allclose(ours, ref.coef_.T, atol=1e-4)
            # predictions: the digit whose angle is nearest to the ridge's point
            xt = ((test.resid[:, layer, 0].double() - w.mean[0, layer].double()) / w.std[0, layer].double()).numpy()
            point = ref.predict(xt)
            angle = np.arctan2(point[:, 1], point[:, 0]) % (2 * math.pi)
            nearest = np.rint(angle / (2 * math.pi / 10)).astype(int) % 10
            seen = set(labels.tolist())
            pred = probe.predict(test)[:, layer, place].numpy()
            agree = [(p == q) for p, q in zip(pred, nearest, strict=True) if q in seen]
            assert np.mean(agree) > 0.99


def test_save_load_round_trip_and_kind_check(tmp_path):
    data = circle_set()
    probe = CircularProbe(alphas=[1.0, 10.0])
    probe.fit(data.split("train"), data.split("val"))
    probe.save(tmp_path / "circ")
    back = CircularProbe.load(tmp_path / "circ")
    test = data.split("test")
    assert torch.equal(back.predict(test), probe.predict(test)) and back.alphas == [1.0, 10.0]
    with pytest.raises(ld.LensDigitsError, match="circular_probe"):
        LinearProbe.load(tmp_path / "circ")
    settings = probe.settings()
    assert settings["alphas"] == [1.0, 10.0] and "chosen_alpha" in settings and "max_iter" not in settings


def test_bad_settings_are_refused():
    with pytest.raises(ld.LensDigitsError, match="alphas"):
        CircularProbe(alphas=[0.0])
    with pytest.raises(ld.LensDigitsError, match="unknown circular probe setting"):
        CircularProbe(learning_rate=0.1)


def test_in_a_sweep_beside_the_linear_probe(native_model):
    grid = ld.run_sweep(native_model, scales=[2], n_per_scale=30, methods=["probe", "circular_probe"], target="answer")
    df = grid.to_dataframe()
    assert {"probe", "circular_probe"} <= set(df["method"])
    circ = df[df["method"] == "circular_probe"]
    assert {"chance", "control", "selectivity"} <= set(circ.dropna(axis=1).columns)
    assert {"units", "tens", "all"} <= set(circ["place"])
