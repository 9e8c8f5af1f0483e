"""Problems by digit scale: seeded, distinct pairs, disjoint splits, scales parsed and checked, templates and few-shot examples."""

import pytest

import lens_digits as ld
from lens_digits.problems.tasks import MAX_SCALE, TaskConfig, generate_problems, n_distinct, operand_range, parse_scales


def test_same_seed_same_problems_and_scales_independent():
    a = generate_problems(TaskConfig(scales=[1, 2, 3], n_per_scale=40, seed=3))
    b = generate_problems(TaskConfig(scales=[1, 2, 3], n_per_scale=40, seed=3))
    assert a == b
    only3 = generate_problems(TaskConfig(scales=[3], n_per_scale=40, seed=3))
    assert [p for p in a if p.scale == 3] == only3
    assert generate_problems(TaskConfig(scales=[3], n_per_scale=40, seed=4)) != only3


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
def test_operands_have_exactly_d_digits_and_answers_are_exact(op):
    problems = generate_problems(TaskConfig(scales=[1, 2, 3, 5], n_per_scale=50, op=op, seed=0))
    for p in problems:
        lo, hi = operand_range(p.scale)
        assert lo <= p.a <= hi and lo <= p.b <= hi
        if p.scale > 1:
            assert len(str(p.a)) == len(str(p.b)) == p.scale
        assert int(p.answer) == {"add": p.a + p.b, "sub": p.a - p.b, "mul": p.a * p.b}[op]
        assert p.prompt == f"{p.a}{ {'add': '+', 'sub': '-', 'mul': '*'}[op] }{p.b}="
    if op == "sub":
        assert all(int(p.answer) >= 0 for p in problems)


def test_sub_allow_negative_draws_negative_answers():
    problems = generate_problems(TaskConfig(scales=[2], n_per_scale=200, op="sub", allow_negative=True))
    assert any(p.answer.startswith("-") for p in problems)


def test_pairs_distinct_and_splits_disjoint():
    problems = generate_problems(TaskConfig(scales=[1, 2], n_per_scale=27, n_train=45, n_val=18))
    pairs = [(p.scale, p.a, p.b) for p in problems]
    assert len(pairs) == len(set(pairs))
    by_split = {s: {(p.a, p.b) for p in problems if p.split == s} for s in ("train", "val", "test")}
    assert not by_split["train"] & by_split["test"] and not by_split["val"] & by_split["test"]
    scale2 = [p for p in problems if p.scale == 2]
    assert [sum(p.split == s for p in scale2) for s in ("train", "val", "test")] == [45, 18, 27]


def test_short_scale_warns_and_uses_each_problem_once():
    with pytest.warns(UserWarning, match="scale 1 has only 100 distinct add problems"):
        problems = generate_problems(TaskConfig(scales=[1, 2], n_per_scale=150))
    ones = [(p.a, p.b) for p in problems if p.scale == 1]
    assert len(ones) == len(set(ones)) == 100
    with pytest.raises(ld.LensDigitsError, match="only 55 distinct sub problems"):
        generate_problems(TaskConfig(scales=[1], n_per_scale=60, op="sub", on_short="error"))
    assert n_distinct(1, "sub") == 55 and n_distinct(2, "add") == 8100


@pytest.mark.parametrize("bad", [0, -1, MAX_SCALE + 1, "0-2", "x", ""])
def test_impossible_scales_raise(bad):
    with pytest.raises(ld.LensDigitsError):
        TaskConfig(scales=bad if isinstance(bad, str) else [bad])


@pytest.mark.parametrize("bad", [[1.5], [True], "2.5", None])
def test_non_integer_scales_raise(bad):
    with pytest.raises(ld.LensDigitsError):
        parse_scales(bad)


def test_parse_scales():
    assert parse_scales("1-4") == [1, 2, 3, 4]
    assert parse_scales("3,1, 2") == [1, 2, 3]
    assert parse_scales(2) == [2]


def test_templates_and_few_shot_examples_never_problems():
    cfg = TaskConfig(scales=[2], n_per_scale=30, template="calculate", few_shot=3, seed=1)
    problems = generate_problems(cfg)
    prefix = problems[0].prompt.rsplit("\n", 1)[0]
    shots = prefix.split("\n")
    assert len(shots) == 3 and all(s.startswith("Calculate: ") for s in shots)
    assert all(p.prompt.startswith(prefix + "\n") and p.prompt.endswith("= ") for p in problems)
    shot_pairs = {tuple(int(x) for x in s.removeprefix("Calculate: ").split(" = ")[0].split(" + ")) for s in shots}
    assert not shot_pairs & {(p.a, p.b) for p in problems}
    for s in shots:
        (x, y), total = s.removeprefix("Calculate: ").split(" = ")[0].split(" + "), s.split(" = ")[1]
        assert int(x) + int(y) == int(total)


@pytest.mark.parametrize("template", ["{a}+", "{a}{b}{c}=", "no fields"])
def test_bad_templates_raise(template):
    with pytest.raises(ld.LensDigitsError, match="template"):
        TaskConfig(template=template)
