"""Digit labels: place names, the first token's digits, the probes' control task and chance."""

import numpy as np
import pytest
import torch
from conftest import splits, synthetic_set

import lens_digits as ld
from lens_digits.errors import LensDigitsError
from lens_digits.methods import LinearProbe
from lens_digits.methods.probes.labels import control_labels, digit_permutation, first_token_digits, relabel
from lens_digits.problems.digits import digit_labels, place_name
from lens_digits.problems.targets import EncodedProblem
from lens_digits.problems.tasks import Problem
from lens_digits.residuals.collect import ResidualSet

# ---- labels --------------------------------------------------------------------------------------


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


# ---- control task and chance ---------------------------------------------------------------------


def digitwise(a, b, width=3):
    """An answer each of whose digits depends only on the operand digits at its own place (no carries)."""
    return "".join(str((a // 10**q % 10 + b // 10**q % 10) % 10) for q in reversed(range(width)))


def test_control_task_measures_reading_the_operands():
    """Residuals that hold operand identity (one-hot of each place's digit pair), not the answer.

    The task (here an operation each of whose answer digits depends only on the operand digits at its
    place) and the control task (the same operation on relabelled digits) are then equally readable by
    memorising operand digits: selectivity is about 0, the control's point. The planted-signal test
    (test_decoders_probes.py) has the opposite case (the answer written, the operands not): selectivity about 1.
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
