"""Operations: registering your own, allowed rules (vectorised or pair by pair) and counting the distinct pairs."""

import pytest

import lens_digits as ld
from lens_digits.problems.operations import n_distinct, operand_range
from lens_digits.problems.tasks import TaskConfig, generate_problems


def test_registered_operation_and_duplicate_refused():
    op = ld.register_operation(ld.Operation("test_absdiff", "~", lambda a, b: abs(a - b)))
    problems = generate_problems(TaskConfig(scales=[2], n_per_scale=10, op=op.name))
    assert all(int(p.answer) == abs(p.a - p.b) and "~" in p.prompt for p in problems)
    with pytest.raises(ld.LensDigitsError, match="already registered"):
        ld.register_operation(ld.Operation("test_absdiff", "~", lambda a, b: 0))


def carries(a, b):
    out, carry = [], 0
    while a or b:
        carry = int(a % 10 + b % 10 + carry >= 10)
        out.append(carry)
        a, b = a // 10, b // 10
    return out


def test_custom_operation_with_a_rule_is_fast_at_every_scale():
    name = "add_carry_inside_test"

    def inside(a, b):
        return carries(a, b)[-1] == 0 and any(carries(a, b))

    if name not in ld.OPERATIONS:
        ld.register_operation(ld.Operation(name, "+", lambda a, b: a + b, allowed=inside))
    # this used to count every pair in Python first: a minute at scale 4, hours at scale 5
    problems = generate_problems(TaskConfig(scales="2-5", n_per_scale=200, op=name, seed=0))
    for p in problems:
        c = carries(p.a, p.b)
        assert c[-1] == 0 and any(c) and int(p.answer) == p.a + p.b
    assert {p.scale for p in problems} == {2, 3, 4, 5} and sum(p.split == "test" for p in problems) == 800
    # the exact count where it can be had, vectorised rules and pair-by-pair rules alike
    assert n_distinct(2, name) == sum(1 for a in range(10, 100) for b in range(10, 100) if carries(a, b)[-1] == 0 and any(carries(a, b)))
    assert n_distinct(6, name) is None


def test_a_rule_that_accepts_almost_nothing_fails_with_a_message():
    name = "add_never_test"
    if name not in ld.OPERATIONS:
        ld.register_operation(ld.Operation(name, "+", lambda a, b: a + b, allowed=lambda a, b: a == 10**6 and b == 10**6))
    with pytest.raises(ld.LensDigitsError, match="allowed rule accepted 0 of .* too few"):
        generate_problems(TaskConfig(scales=[5], n_per_scale=20, op=name))
    with pytest.raises(ld.LensDigitsError, match="too few are left"):
        generate_problems(TaskConfig(scales=[2], n_per_scale=20, op=name))


def test_a_vectorisable_rule_and_a_scalar_one_allow_the_same_pairs():
    from lens_digits.problems.operations import _allowed_mask

    def scalar(a, b):
        return bool(a >= b)  # bool() of an array raises: evaluated pair by pair

    def fooled(a, b):
        return a >= b if isinstance(a, int) else a < b  # disagrees with itself on arrays: caught by the spot check

    for scale in (1, 2, 3):
        want = _allowed_mask(scale, scalar)
        assert want.sum() == scale_pairs_ge(scale)
        assert (_allowed_mask(scale, lambda a, b: a >= b) == want).all()
        assert (_allowed_mask(scale, fooled) == want).all()


def scale_pairs_ge(scale):
    lo, hi = operand_range(scale)
    m = hi - lo + 1
    return m * (m + 1) // 2
