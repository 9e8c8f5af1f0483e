"""Operations and the operand pairs each digit scale draws from.

An :class:`Operation` is what a task computes (``add``, ``sub``, ``mul`` or your
own, registered with :func:`register_operation`). A digit scale ``d`` draws
distinct operand pairs with exactly ``d`` digits each (scale 1 includes 0),
filtered by the operation's ``allowed`` rule; :func:`draw_pairs` samples them
uniformly without replacement.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lens_digits.errors import LensDigitsError


@dataclass(frozen=True)
class Operation:
    """A binary operation on non-negative integers.

    Args:
        name: Registry name (``"add"``).
        symbol: What ``{op}`` renders to in a template (``"+"``).
        fn: ``fn(a, b) -> int``, the exact result.
        allowed: Optional ``allowed(a, b) -> bool`` that filters operand pairs
            (for example ``a >= b`` for non-negative subtraction).
        columns: How column arithmetic moves between places: ``"carry"`` (an addition:
            grids get rows by the number of carries), ``"borrow"`` (a subtraction:
            rows by borrows) or None (no such rows). See :mod:`lens_digits.problems.carries`.
    """

    name: str
    symbol: str
    fn: Callable[[int, int], int]
    allowed: Callable[[int, int], bool] | None = None
    columns: str | None = None

    def __post_init__(self) -> None:
        """Check ``columns``.

        Raises:
            LensDigitsError: ``columns`` is not ``"carry"``, ``"borrow"`` or None.
        """
        if self.columns not in (None, "carry", "borrow"):
            raise LensDigitsError(f"operation {self.name!r}: columns must be 'carry', 'borrow' or None, got {self.columns!r}")


OPERATIONS: dict[str, Operation] = {}


def register_operation(op: Operation) -> Operation:
    """Add an operation to the registry; refuses a name that is taken.

    Returns:
        ``op``, unchanged.

    Raises:
        LensDigitsError: An operation of that name is already registered.

    >>> register_operation(Operation("maxof", "max", max)).name
    'maxof'
    """
    if op.name in OPERATIONS:
        raise LensDigitsError(f"an operation named {op.name!r} is already registered; pick another name")
    OPERATIONS[op.name] = op
    return op


register_operation(Operation("add", "+", lambda a, b: a + b, columns="carry"))
register_operation(Operation("sub", "-", lambda a, b: a - b, columns="borrow"))
register_operation(Operation("mul", "*", lambda a, b: a * b))


def operand_range(scale: int) -> tuple[int, int]:
    """Inclusive range of ``scale``-digit operands (scale 1 includes 0).

    Returns:
        ``(lowest, highest)``.
    """
    return (0 if scale == 1 else 10 ** (scale - 1)), 10**scale - 1


ENUMERATION_LIMIT = 1_000_000
"""Pair spaces up to this size are enumerated (exact counts); larger ones are sampled."""


@functools.lru_cache(maxsize=8)
def _allowed_mask(scale: int, keep: Callable[[int, int], bool]) -> np.ndarray:
    """Which of the scale's enumerated pairs (``a``-major) a filter allows.

    Tries the filter on whole arrays first (fast for rules such as ``a >= b``),
    and keeps that only if it agrees with calling it on single pairs; otherwise
    calls it pair by pair.

    Returns:
        A boolean array, one entry per pair of the scale in ``a``-major order: whether ``keep`` allows it.
    """
    lo, hi = operand_range(scale)
    m = hi - lo + 1
    a, b = np.divmod(np.arange(m * m), m)
    a, b = a + lo, b + lo
    try:
        with np.errstate(all="ignore"):
            mask = keep(a, b)  # type: ignore[arg-type]
    except Exception:  # a rule written for single ints (if/while on the values, str(), ...)
        mask = None
    if isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == a.shape:
        check = np.linspace(0, m * m - 1, num=min(m * m, 257)).astype(int)
        if all(bool(keep(int(a[i]), int(b[i]))) == bool(mask[i]) for i in check):
            return mask
    return np.fromiter((bool(keep(int(x), int(y))) for x, y in zip(a.tolist(), b.tolist(), strict=True)), dtype=bool, count=m * m)


def n_distinct(scale: int, op: str, allow_negative: bool = False) -> int | None:
    """Number of distinct ``(a, b)`` pairs available at a scale.

    None where an operation's own ``allowed`` rule filters more than
    :data:`ENUMERATION_LIMIT` pairs (too many to count; the draw finds out).

    Returns:
        The number of allowed pairs, or None.

    >>> n_distinct(2, "add"), n_distinct(1, "sub")
    (8100, 55)
    """
    operation = OPERATIONS[op]
    lo, hi = operand_range(scale)
    m = hi - lo + 1
    if op == "sub" and not allow_negative:
        return m * (m + 1) // 2
    if operation.allowed is None:
        return m * m
    if m * m > ENUMERATION_LIMIT:
        return None
    return int(_allowed_mask(scale, operation.allowed).sum())


def pair_filter(op: str, allow_negative: bool) -> Callable[[int, int], bool] | None:
    """The rule operand pairs of ``op`` must pass: its own ``allowed``, or ``a >= b`` for non-negative ``sub``.

    Returns:
        The rule, as ``keep(a, b) -> bool``, or None if every pair is allowed.
    """
    if op == "sub" and not allow_negative:
        return lambda a, b: a >= b
    return OPERATIONS[op].allowed


def draw_pairs(
    rng: np.random.Generator, scale: int, n: int, keep: Callable[[int, int], bool] | None, what: str = "problems"
) -> list[tuple[int, int]]:
    """Draw ``n`` distinct pairs, uniformly among the allowed ones, without replacement.

    The draw is a stream: asking for more pairs appends to the same first ones,
    so the test problems do not change when train problems are added.

    Returns:
        The ``(a, b)`` pairs in the order drawn: ``n`` of them, or all the allowed pairs if there are fewer.

    Raises:
        LensDigitsError: Sampling a large space found too few allowed pairs (a rule that accepts almost none).
    """
    lo, hi = operand_range(scale)
    m = hi - lo + 1
    if m * m <= ENUMERATION_LIMIT:
        a, b = np.divmod(np.arange(m * m), m)
        pairs = np.stack([a + lo, b + lo], axis=1)
        if keep is not None:
            pairs = pairs[_allowed_mask(scale, keep)]
        idx = rng.permutation(len(pairs))[:n]  # a prefix of one shuffle: the first k pairs do not depend on n
        return [(int(x), int(y)) for x, y in pairs[idx]]
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    budget, tried = 50 * n + 100_000, 0
    while len(out) < n:
        if tried >= budget:
            raise LensDigitsError(
                f"scale {scale}: the operation's allowed rule accepted {len(out)} of {tried:,} random {what} "
                f"({len(out) / tried:.2%}), too few to draw {n} distinct ones; lower n_per_scale or loosen the rule"
            )
        draws = rng.integers(lo, hi + 1, size=(4096, 2))  # fixed-size draws: the first k pairs do not depend on n
        for x, y in draws.tolist():
            tried += 1
            if (x, y) in seen or (keep is not None and not keep(x, y)):
                continue
            seen.add((x, y))
            out.append((x, y))
            if len(out) == n:
                break
    return out
