"""Carries and borrows: hand counts, the digit-sum identity, and the breakdown rows every method gets."""

import random

import pandas as pd
import pytest
import torch

import lens_digits as ld
from lens_digits.methods.scores import Scores, add_column_breakdown
from lens_digits.problems.carries import incoming
from lens_digits.problems.digits import place_name
from lens_digits.problems.tasks import Problem
from lens_digits.results.grid import AccuracyGrid


def digit_sum(n: int) -> int:
    return sum(int(c) for c in str(abs(n)))


@pytest.mark.parametrize(
    "a,b,rule,want",
    [
        (47, 85, "carry", [False, True, True]),  # 7+5 carries into the tens, 4+8+1 into the hundreds
        (123, 456, "carry", [False, False, False]),
        (999, 1, "carry", [False, True, True, True]),
        (5, 5, "carry", [False, True]),
        (52, 7, "borrow", [False, True]),  # 2-7 borrows from the tens
        (1000, 1, "borrow", [False, True, True, True]),
        (17, 31, "borrow", [False, True]),  # negative: the borrows of 31-17
        (86, 43, "borrow", [False, False]),
    ],
)
def test_hand_counted_carries_and_borrows(a, b, rule, want):
    assert incoming(a, b, rule) == want


def test_counts_follow_the_digit_sum_identity():
    """Each carry turns 10 in one place into 1 in the next: digitsum(a) + digitsum(b) - digitsum(a + b) = 9 x carries."""
    rng = random.Random(0)
    for _ in range(2000):
        a, b = rng.randrange(10**6), rng.randrange(10**6)
        assert sum(incoming(a, b, "carry")) * 9 == digit_sum(a) + digit_sum(b) - digit_sum(a + b)
        x, y = max(a, b), min(a, b)  # x - y borrows exactly where y + (x - y) carries
        assert sum(incoming(a, b, "borrow")) * 9 == digit_sum(y) + digit_sum(x - y) - digit_sum(x)


def test_breakdown_rows_count_the_right_problems():
    problems = [Problem(2, "add", a, b, f"{a}+{b}=", str(a + b), "test") for a, b in [(10, 20), (15, 15), (47, 85), (99, 99)]]
    correct = torch.tensor([[False, True], [True, True], [False, False], [True, False]])
    units = Scores(correct.clone(), applies=torch.ones(4, dtype=torch.bool))
    scores = add_column_breakdown(Scores(correct, breakdown={"place": {"units": units, "tens": Scores(correct.clone())}}), problems)
    grid = AccuracyGrid.from_scores([("m", "answer", scores)], problems, thresholds=())
    df = grid.to_dataframe()
    carries = df[(df["carries"] != "all") & (df["place"] == "all")].set_index(["carries", "layer"])
    # 10+20: 0 carries; 15+15: 1 (into the tens); 47+85 and 99+99: 2
    assert carries.loc[("0", 0), "n"] == 1 and carries.loc[("1", 0), "n"] == 1 and carries.loc[("2", 0), "n"] == 2
    assert carries.loc[("2", 0), "accuracy"] == 0.5 and carries.loc[("2", 1), "accuracy"] == 0.0
    tens = df[(df["place"] == "tens") & (df["carry_in"] != "all")].set_index(["carry_in", "layer"])
    assert tens.loc[("yes", 0), "n"] == 3 and tens.loc[("no", 0), "n"] == 1  # only 10+20 sends nothing into the tens
    units_in = set(df.loc[(df["place"] == "units"), "carry_in"])
    assert units_in == {"all", "no"}, "the units never receive a carry"


def test_multiplication_gets_no_carry_rows():
    problems = [Problem(1, "mul", 3, 4, "3*4=", "12", "test")]
    scores = add_column_breakdown(Scores(torch.ones(1, 2, dtype=torch.bool)), problems)
    assert scores.breakdown == {}


def test_every_method_of_a_sweep_gets_carry_rows(native_model):
    grid = ld.run_sweep(native_model, scales=[2], n_per_scale=40, methods=["logit_lens", "probe"], target="answer", seed=3)
    df = grid.to_dataframe()
    tests = [p for p in grid.problems if p.split == "test"]
    counts = pd.Series([(digit_sum(p.a) + digit_sum(p.b) - digit_sum(p.a + p.b)) // 9 for p in tests]).value_counts()
    for method in ("logit_lens", "probe"):
        rows = df[(df["method"] == method) & (df["carries"] != "all") & (df["place"] == "all") & (df["layer"] == 0)]
        assert dict(zip(rows["carries"].astype(int), rows["n"], strict=True)) == counts.to_dict()
    # carry-in rows sit under the digit places: the tens of a 2-digit sum receive a carry exactly when the units add to 10+
    tens = df[(df["method"] == "probe") & (df["place"] == "tens") & (df["carry_in"] == "yes") & (df["layer"] == 0)]
    assert int(tens["n"].iloc[0]) == sum((p.a % 10 + p.b % 10) >= 10 for p in tests)
    assert place_name(1) == "tens"


def test_a_subtraction_sweep_has_borrow_rows(native_model):
    grid = ld.run_sweep(native_model, scales=[2], n_per_scale=30, op="sub", target="answer", seed=1)
    assert {"borrows", "borrow_in"} <= set(grid.breakdown_columns) and "carries" not in grid.breakdown_columns
