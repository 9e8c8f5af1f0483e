"""Linear probes per digit place: agreement with scikit-learn, planted signal, save/load, end to end."""

import numpy as np
import pytest
import torch

import lens_digits as ld
from lens_digits.decoders import DECODERS, LinearProbe, Scores, fit_multinomial
from lens_digits.decoders.labels import control_labels, digit_labels, digit_permutation, first_token_digits, place_name, relabel
from lens_digits.errors import LensDigitsError
from lens_digits.residuals import ResidualSet
from lens_digits.targets import EncodedProblem
from lens_digits.tasks import Problem


def synthetic_set(answers, splits, signal_layers, *, n_layers=5, d_model=24, strength=1.5, seed=0, scales=None, answer_tokens=None):
    """Residuals where each answer digit is written linearly (one random direction per place and digit) at ``signal_layers``."""
    gen = torch.Generator().manual_seed(seed)
    n = len(answers)
    places = max(len(a.lstrip("-")) for a in answers)
    labels = digit_labels(answers, places)
    codes = torch.randn(places, 10, d_model, generator=gen)
    signal = sum(codes[p][labels[:, p]] for p in range(places))  # (n, d)
    resid = torch.randn(n, n_layers, 1, d_model, generator=gen)
    for layer in signal_layers:
        resid[:, layer, 0] += strength * signal
    resid[:, :, 0, 0] += 3.0  # an offset, so standardisation matters
    scales = scales or [3] * n
    problems = [
        Problem(s, "add", i, i * 7919 % 1000, f"{i}+{i * 7919 % 1000}=", a, sp)
        for i, (a, sp, s) in enumerate(zip(answers, splits, scales, strict=True))
    ]
    tokens = answer_tokens or [len(a) for a in answers]
    encoded = [EncodedProblem((1, 2, 3), tuple(range(4, 4 + k))) for k in tokens]
    return ResidualSet(resid, torch.zeros(n, 1, dtype=torch.long), problems, encoded, {})


def random_answers(n, low=100, high=1000, seed=0):
    rng = np.random.default_rng(seed)
    return [str(v) for v in rng.integers(low, high, size=n)]


def splits(n_train, n_val, n_test):
    return ["train"] * n_train + ["val"] * n_val + ["test"] * n_test


@pytest.fixture(scope="module")
def planted():
    answers = random_answers(700)
    data = synthetic_set(answers, splits(400, 100, 200), signal_layers=[2, 4])
    probe = LinearProbe(Cs=(0.1, 1.0), seed=0)
    probe.fit(data.split("train"), data.split("val"))
    return data, probe


# ---- helpers -----------------------------------------------------------------------------------


def test_place_names_and_labels():
    assert [place_name(p) for p in range(5)] == ["units", "tens", "hundreds", "thousands", "10^4"]
    assert digit_labels(["5", "-31", "120"], 3).tolist() == [[5, 0, 0], [1, 3, 0], [0, 2, 1]]
    with pytest.raises(LensDigitsError, match="decimal integer"):
        digit_labels(["1.5"], 2)


def test_first_token_digits_rules():
    data = synthetic_set(["123", "45", "6", "789"], splits(0, 0, 4), [], answer_tokens=[3, 1, 1, 2])
    # one token per digit -> 1; a one-token answer is covered whole; otherwise 1 without a tokenizer
    assert first_token_digits(data) == [1, 2, 1, 1]
    data.info["first_token_digits"] = [3, 5, 0, 2]
    assert first_token_digits(data) == [3, 2, 1, 2]  # clamped to 1..len(digits)
    data.info["first_token_digits"] = [1, 1]
    with pytest.raises(LensDigitsError, match="aligned"):
        first_token_digits(data)


def test_registered_and_validated():
    assert DECODERS["probe"] is LinearProbe
    assert LinearProbe.targets == ("first", "answer")
    with pytest.raises((LensDigitsError, TypeError)):  # TypeError under runtime type checking
        LinearProbe(scope="global")
    with pytest.raises(LensDigitsError, match="Cs"):
        LinearProbe(Cs=(0.0, 1.0))
    with pytest.raises(LensDigitsError, match="not fitted"):
        LinearProbe().weights  # noqa: B018


# ---- 1. agreement with scikit-learn -------------------------------------------------------------


def test_solver_matches_sklearn_objective():
    from sklearn.linear_model import LogisticRegression

    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 10, (2, 300, 1), generator=gen)
    x = torch.randn(2, 300, 12, generator=gen) + 0.8 * torch.randn(2, 10, 12, generator=gen).gather(1, y.expand(-1, -1, 12))
    x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True, correction=0)
    res = fit_multinomial(x, y, [0.1, 1.0], max_iter=300, tol=1e-5)
    for block in range(2):
        for ci, c in enumerate([0.1, 1.0]):
            sk = LogisticRegression(C=c, max_iter=1000, tol=1e-7).fit(x[block].double().numpy(), y[block, :, 0].numpy())
            w = torch.from_numpy(sk.coef_.T).float()
            b = torch.from_numpy(sk.intercept_).float()
            assert torch.allclose(res.W[block, ci, 0], w, atol=2e-3 * max(1.0, float(w.abs().max())))
            assert torch.allclose(res.b[block, ci, 0], b - b.mean(), atol=2e-3 * max(1.0, float(b.abs().max())))


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


# ---- 2. planted signal ----------------------------------------------------------------------------


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


# ---- 3. save / load, determinism ------------------------------------------------------------------


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
    other = LinearProbe(Cs=(0.1, 1.0), seed=1, max_iter=5)
    other.fit(data.split("train"), data.split("val"))
    assert not torch.equal(other.control_weights.W, probe.control_weights.W)


# ---- scopes, signs, groups ------------------------------------------------------------------------


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


# ---- 4. end to end ------------------------------------------------------------------------------------


def test_run_sweep_with_logit_lens_and_probe():
    grid = ld.run_sweep(ld.testing.tiny_model(), scales=[1, 2], n_per_scale=40, methods=["logit_lens", "probe"], target="both", seed=0)
    df = grid.to_dataframe()
    assert {"place", "chance", "control", "selectivity"} <= set(df.columns)
    probe_rows = df[df["method"] == "probe"]
    assert set(probe_rows["place"]) == {"all", "units", "tens", "hundreds"}
    assert probe_rows["chance"].notna().all() and probe_rows["control"].notna().all()
    assert set(probe_rows["target"]) == {"first", "answer"}
    main = df[df["place"] == "all"]
    key = ["target", "scale", "layer"]
    n_lens = main[main["method"] == "logit_lens"].set_index(key)["n"].sort_index()
    n_probe = main[main["method"] == "probe"].set_index(key)["n"].sort_index()
    assert n_lens.equals(n_probe)
    assert grid.info["methods"]["probe"]["scope"] == "per_scale"


# ---- control task and chance ------------------------------------------------------------------------


def digitwise(a, b, width=3):
    """An answer each of whose digits depends only on the operand digits at its own place (no carries)."""
    return "".join(str((a // 10**q % 10 + b // 10**q % 10) % 10) for q in reversed(range(width)))


def test_control_task_measures_reading_the_operands():
    """Residuals that hold operand identity (one-hot of each place's digit pair), not the answer.

    The task (here an operation each of whose answer digits depends only on the operand digits at its
    place) and the control task (the same operation on relabelled digits) are then equally readable by
    memorising operand digits: selectivity is about 0, the control's point. The planted-signal test
    above has the opposite case (the answer written, the operands not): selectivity about 1.
    """
    if "digitwise_test" not in ld.OPERATIONS:
        ld.register_operation(ld.Operation("digitwise_test", "#", lambda a, b: int(digitwise(a, b))))
    rng = np.random.default_rng(3)
    a, b = rng.integers(100, 1000, 900).tolist(), rng.integers(100, 1000, 900).tolist()
    problems = [
        Problem(3, "digitwise_test", x, y, f"{x}#{y}=", digitwise(x, y), sp) for x, y, sp in zip(a, b, splits(600, 100, 200), strict=True)
    ]
    keys = torch.tensor([[(x // 10**q % 10) * 10 + y // 10**q % 10 for q in range(3)] for x, y in zip(a, b, strict=True)])
    features = torch.nn.functional.one_hot(keys, 100).float().reshape(len(problems), 300)
    resid = features[:, None, None, :].repeat(1, 2, 1, 1) + 0.05 * torch.randn(len(problems), 2, 1, 300)
    data = ResidualSet(resid, torch.zeros(len(problems), 1, dtype=torch.long), problems, [EncodedProblem((1,), (2,))] * len(problems), {})
    probe = LinearProbe(Cs=(1.0, 10.0), seed=0)
    probe.fit(data.split("train"), data.split("val"))
    test = data.split("test")
    for name, sub in probe.score(test, "answer").breakdown["place"].items():
        acc, ctrl = sub.correct.float().mean(0), sub.metrics["control"].mean(0)
        assert (acc > 0.8).all() and (ctrl > 0.8).all(), (name, acc, ctrl)
        assert (sub.metrics["selectivity"].mean(0).abs() < 0.1).all(), name


def test_control_labels_are_the_operation_on_relabelled_digits():
    perm = digit_permutation(0)
    problems = [Problem(2, "add", 47, 85, "47+85=", "132", "test"), Problem(2, "add", 99, 10, "99+10=", "109", "test")]
    labels = control_labels(problems, perm, 4)
    for p, row in zip(problems, labels.tolist(), strict=True):
        value = relabel(p.a, perm) + relabel(p.b, perm)
        assert row == [value // 10**q % 10 for q in range(4)]
    assert relabel(47, perm) == int(f"{perm[4]}{perm[7]}")


def test_chance_is_the_train_majority_label():
    # train answers are mostly 111; test answers mostly 222: chance must not peek at the test labels
    answers = ["111"] * 40 + ["333"] * 20 + ["111"] * 5 + ["222"] * 15 + ["111"] * 5
    data = synthetic_set(answers, splits(60, 5, 20), signal_layers=[], n_layers=2)
    probe = LinearProbe(Cs=(1.0,), control=False)
    probe.fit(data.split("train"), data.split("val"))
    test = data.split("test")
    scores = probe.score(test, "answer")
    assert scores.metrics["chance"][:, 0].tolist() == [float(p.answer == "111") for p in test.problems]
    units = scores.breakdown["place"]["units"].metrics["chance"][:, 0]
    assert units.mean().item() == pytest.approx(5 / 20)
