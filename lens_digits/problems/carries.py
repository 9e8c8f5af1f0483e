"""Carries and borrows of column arithmetic: facts of a problem, which every method's scores are broken down by.

For an addition (an operation with ``columns="carry"``, such as ``add``), place
``i`` of the answer *receives a carry* when the digits of places ``i-1`` and
below add up to ten or more; a problem's number of carries is how many places
receive one (``47+85=132``: the tens and hundreds places do, 2 carries). For a
subtraction (``columns="borrow"``, such as ``sub``) the same holds for borrows
of the larger operand minus the smaller, so a negative result has the borrows
of its absolute value (``17-31 = -(31-17)``: the units borrow from the tens, 1 borrow).

:func:`add_column_breakdown` gives any decoder's :class:`~lens_digits.methods.scores.Scores`
rows by the number of carries (column ``carries``, or ``borrows``) and, on the
digit place rows (column ``place``), rows by whether the place receives one
(``carry_in`` / ``borrow_in``: ``yes`` or ``no``).
"""

from collections.abc import Sequence

from lens_digits.problems.operations import OPERATIONS
from lens_digits.problems.tasks import Problem

COLUMN_NAMES = {"carry": ("carries", "carry_in"), "borrow": ("borrows", "borrow_in")}


def incoming(a: int, b: int, rule: str) -> list[bool]:
    """Whether each place (units first) receives a carry (``rule="carry"``: ``a + b``) or a borrow (``"borrow"``).

    A borrow is of the larger operand minus the smaller; every place of the column computation is listed.

    Returns:
        One flag per place, units first: as many places as ``|a| + |b|`` has digits for a carry, as the larger operand for a borrow.

    >>> incoming(47, 85, "carry")
    [False, True, True]
    >>> incoming(100, 1, "borrow")
    [False, True, True]
    >>> incoming(17, 31, "borrow")
    [False, True]
    """
    if rule == "carry":
        x, y = abs(a), abs(b)
        width = len(str(x + y))
    else:
        x, y = max(a, b), min(a, b)
        width = len(str(x))
    out, move = [], 0
    for i in range(width):
        out.append(bool(move))
        dx, dy = x // 10**i % 10, y // 10**i % 10
        move = int(dx + dy + move >= 10) if rule == "carry" else int(dx - dy - move < 0)
    return out


def column_rule(problems: Sequence[Problem]) -> str | None:
    """``carry`` or ``borrow`` when every problem's operation has that column rule, else None.

    Returns:
        The column rule all the problems share, or None if they share none.
    """
    rules = {getattr(OPERATIONS.get(p.op), "columns", None) for p in problems}
    return rules.pop() if len(rules) == 1 else None
