"""Linear probes per digit place: agreement with scikit-learn, planted signal, save/load, scopes and signs."""

import numpy as np
import pytest
import torch
from conftest import splits, synthetic_set

from lens_digits.errors import LensDigitsError
from lens_digits.methods import METHODS, LinearProbe, Scores
from lens_digits.methods.probes.labels import control_labels
from lens_digits.problems.digits import digit_labels


def random_answers(n, low=100, high=1000, seed=0):
    rng = np.random.default_rng(seed)
    return [str(v) for v in rng.integers(low, high, size=n)]


@pytest.fixture(scope="module")
def planted():
    answers = random_answers(700)
    data = synthetic_set(answers, splits(400, 100, 200), signal_layers=[2, 4])
    probe = LinearProbe(Cs=(0.1, 1.0), seed=0)
    probe.fit(data.split("train"), data.split("val"))
    return data, probe


def test_registered_and_validated():
    assert METHODS["probe"] is LinearProbe
    assert LinearProbe.targets == ("first", "answer")
    with pytest.raises((LensDigitsError, TypeError)):  # TypeError under runtime type checking
        LinearProbe(scope="global")
    with pytest.raises(LensDigitsError, match="Cs"):
        LinearProbe(Cs=(0.0, 1.0))
    with pytest.raises(LensDigitsError, match="not fitted"):
        LinearProbe().weights  # noqa: B018


# ---- 1. agreement with scikit-learn (the solver alone: test_optim.py) ----------------------------


def test_probe_agrees_with_sklearn_per_layer():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    answers = random_answers(500, seed=1)
    data = synthetic_set(answers, splits(300, 50, 150), signal_layers=[1, 2], n_layers=3, d_model=16, strength=0.5, seed=1)
    train, val, test = data.split("train"), data.split("val"), data.split("test")
    probe = LinearProbe(Cs=(1.0,), control=False, max_iter=500, tol=1e-5)
    probe.fit(train, val)
    pred = probe.predict(test)  # (n, layer, place)
    y_train = digit_labels([p.answer for p in train.problems], 3)
    y_test = digit_labels([p.answer for p in test.problems], 3)
    for layer in range(3):
        scaler = StandardScaler().fit(train.resid[:, layer, 0].numpy())
        x_train = scaler.transform(train.resid[:, layer, 0].numpy())
        x_test = scaler.transform(test.resid[:, layer, 0].numpy())
        for place in range(3):
            sk = LogisticRegression(C=1.0, max_iter=2000).fit(x_train, y_train[:, place].numpy())
            sk_pred = torch.from_numpy(sk.predict(x_test))
            ours = pred[:, layer, place]
            acc_sk = (sk_pred == y_test[:, place]).float().mean()
            acc_ours = (ours == y_test[:, place]).float().mean()
            assert abs(acc_sk - acc_ours) <= 0.01, (layer, place, acc_sk, acc_ours)
            assert (sk_pred == ours).float().mean() >= 0.95


# ---- 2. planted signal ---------------------------------------------------------------------------


def test_planted_signal_found_only_where_planted(planted):
    data, probe = planted
    test = data.split("test")
    scores = probe.score(test, "answer")
    acc = scores.correct.float().mean(0)
    control = scores.metrics["control"].mean(0)
    chance = scores.metrics["chance"].mean(0)
    for layer in range(5):
        if layer in (2, 4):
            assert acc[layer] > control[layer] + 0.5, (layer, acc, control)
        else:
            assert acc[layer] < chance[layer] + 0.02, (layer, acc, chance)
    places = scores.breakdown["place"]
    assert list(places) == ["units", "tens", "hundreds"]
    ctrl_labels = control_labels(test.problems, probe.control_perm, 3)
    control_majority = {name: torch.bincount(ctrl_labels[:, p]).max().item() / len(test) for p, name in enumerate(places)}
    for name, sub in places.items():
        assert isinstance(sub, Scores) and bool(sub.applies.all())
        p_acc = sub.correct.float().mean(0)
        p_ctrl = sub.metrics["control"].mean(0)
        p_chance = sub.metrics["chance"].mean(0)
        assert set(sub.metrics) == {"chance", "control", "selectivity"}
        assert 0.05 < float(p_chance[0]) < 0.25  # majority digit rate, not 0
        for layer in range(5):
            if layer in (2, 4):
                assert p_acc[layer] > p_ctrl[layer] + 0.4, (name, layer)
                assert float(sub.metrics["selectivity"].mean(0)[layer]) == pytest.approx(float(p_acc[layer] - p_ctrl[layer]))
            else:
                assert p_acc[layer] < p_chance[layer] + 0.12, (name, layer, p_acc, p_chance)
                # the operands are not in these residuals either: the control probe does no better than its majority label
                assert p_ctrl[layer] < control_majority[name] + 0.12, (name, layer, p_ctrl, control_majority)


def test_first_target_reads_covered_places(planted):
    data, probe = planted
    test = data.split("test")
    first = probe.score(test, "first")
    hundreds = first.breakdown["place"]["hundreds"].correct
    assert torch.equal(first.correct, hundreds)  # one token per digit: first token = most significant digit
    test.info["first_token_digits"] = [3] * len(test)
    assert torch.equal(probe.score(test, "first").correct, probe.score(test, "answer").correct)


def test_shapes_dtypes_and_weights(planted):
    data, probe = planted
    test = data.split("test")
    scores = probe.score(test, "answer")
    assert scores.correct.shape == (len(test), 5) and scores.correct.dtype == torch.bool
    assert all(v.shape == (len(test), 5) and v.dtype == torch.float32 for v in scores.metrics.values())
    w = probe.weights
    assert w.W.shape == (1, 5, 3, 24, 10) and w.b.shape == (1, 5, 3, 10) and w.mean.shape == (1, 5, 24)
    assert set(w.C.unique().tolist()) <= {0.1, 1.0}
    # raw-space weights give the same logits as standardised ones
    w_raw, b_raw = w.raw()
    resid = test.resid[:, :, 0]
    raw_logits = torch.einsum("nld,lpdk->nlpk", resid, w_raw[0]) + b_raw[0]
    std_logits = w.logits(resid, 0)
    allowed = w.classes[0][None, None]
    assert torch.allclose(raw_logits[allowed.expand_as(raw_logits)], std_logits[allowed.expand_as(std_logits)], atol=1e-3)
    settings = probe.settings()
    assert settings["group_scales"] == [[3]] and len(settings["chosen_C"][0]) == 5


# ---- 3. save / load, determinism -----------------------------------------------------------------


def test_save_load_round_trip(planted, tmp_path):
    data, probe = planted
    test = data.split("test")
    probe.save(tmp_path / "probe")
    assert {p.name for p in (tmp_path / "probe").iterdir()} == {"probe.json", "probe.safetensors"}
    loaded = LinearProbe.load(tmp_path / "probe")
    for target in ("first", "answer"):
        a, b = probe.score(test, target), loaded.score(test, target)
        assert torch.equal(a.correct, b.correct)
        assert all(torch.equal(a.metrics[k], b.metrics[k]) for k in a.metrics)
        for name in a.breakdown["place"]:
            assert torch.equal(a.breakdown["place"][name].correct, b.breakdown["place"][name].correct)
    assert torch.equal(loaded.weights.W, probe.weights.W) and torch.equal(loaded.weights.C, probe.weights.C)
    with pytest.raises(LensDigitsError, match="not a saved probe"):
        LinearProbe.load(tmp_path)


def test_deterministic_given_seed(planted):
    data, probe = planted
    again = LinearProbe(Cs=(0.1, 1.0), seed=0)
    again.fit(data.split("train"), data.split("val"))
    assert torch.equal(again.weights.W, probe.weights.W)
    assert torch.equal(again.control_weights.W, probe.control_weights.W)
    other = LinearProbe(Cs=(0.1, 1.0), seed=1)  # only the seed differs: it draws the control task's relabelling
    other.fit(data.split("train"), data.split("val"))
    assert other.control_perm != probe.control_perm
    assert not torch.equal(other.control_weights.W, probe.control_weights.W)
    # the task's own probes do not depend on the seed (solved beside other control cells, to the solver's precision)
    torch.testing.assert_close(other.weights.W, probe.weights.W, atol=1e-3, rtol=1e-3)


# ---- scopes, signs, groups -----------------------------------------------------------------------


def test_per_scale_and_pooled_groups():
    one = [str(v) for v in np.random.default_rng(2).integers(0, 19, size=200)]
    three = random_answers(200, seed=3)
    answers = one + three
    sp = splits(120, 30, 50) * 2
    data = synthetic_set(answers, sp, signal_layers=[1], n_layers=2, scales=[1] * 200 + [3] * 200, seed=2)
    train, val, test = data.split("train"), data.split("val"), data.split("test")
    per = LinearProbe(Cs=(1.0,), max_iter=30)
    per.fit(train, val)
    assert per.group_scales == [[1], [3]] and per.n_places == [2, 3]
    scores = per.score(test, "answer")
    applies = scores.breakdown["place"]["hundreds"].applies
    assert applies.tolist() == [p.scale == 3 for p in test.problems]
    pooled = LinearProbe(scope="pooled", Cs=(1.0,), max_iter=30)
    pooled.fit(train, val)
    assert pooled.group_scales == [[1, 3]] and pooled.weights.W.shape[0] == 1
    assert bool(pooled.score(test, "answer").breakdown["place"]["hundreds"].applies.all())
    with pytest.raises(LensDigitsError, match="scale"):
        per.score(synthetic_set(["12"], ["test"], [], n_layers=2, scales=[2]), "answer")


def test_negative_answers_probe_magnitude():
    answers = [str(-v if i % 2 else v) for i, v in enumerate(np.random.default_rng(4).integers(10, 100, size=300))]
    data = synthetic_set(answers, splits(200, 40, 60), signal_layers=[1], n_layers=2, strength=2.0, seed=4)
    probe = LinearProbe(Cs=(1.0,), max_iter=50)
    probe.fit(data.split("train"), data.split("val"))
    assert probe.n_places == [2]
    acc = probe.score(data.split("test"), "answer").correct.float().mean(0)
    assert acc[1] > 0.8 and acc[0] < 0.2


def test_fitting_shows_its_progress(capsys):
    answers = random_answers(200, seed=4)
    data = synthetic_set(answers, splits(120, 40, 40), signal_layers=[1], n_layers=2)
    LinearProbe(Cs=(1.0,), control=False, progress=True).fit(data.split("train"), data.split("val"))
    err = capsys.readouterr().err
    assert "fitting probes" in err and "fits" in err


def test_the_regularisation_is_chosen_blind_to_the_test_labels(planted):
    """Permuting the test problems' answers changes the test accuracy, never the chosen C or the fitted probes."""
    import dataclasses

    from lens_digits.runs.draw import score_methods

    data, _ = planted
    train, val, test = data.split("train"), data.split("val"), data.split("test")
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = dataclasses.replace(test, problems=[test.problems[i] for i in order])  # the answers move among test problems
    fitted, accuracy = [], []
    for t in (test, shuffled):
        probe = LinearProbe(Cs=(0.01, 0.1, 1.0, 10.0), seed=0)
        (_, _, scores), *_ = score_methods(None, [probe], {"probe": ["answer"]}, train, val, {"answer": t}, seed=0)
        fitted.append((probe.weights.C, probe.weights.W, probe.control_weights.C))
        accuracy.append(scores.correct.float().mean())
    assert torch.equal(fitted[0][0], fitted[1][0]) and torch.equal(fitted[0][1], fitted[1][1])
    assert torch.equal(fitted[0][2], fitted[1][2])
    assert accuracy[0] != accuracy[1]  # the test labels did change what is scored
