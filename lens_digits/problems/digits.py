"""Digits and digit places of answers: what every method that reads places (lenses, probes, carries) agrees on.

Places are counted from the units: place 0 is ``units``, 1 ``tens``, ...
"""

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from lens_digits.errors import LensDigitsError

N_DIGITS = 10


PLACE_NAMES = ("units", "tens", "hundreds", "thousands")


def place_name(place: int) -> str:
    """Name of digit place ``place`` (0 = units): ``units .. thousands``, then ``10^4``, ``10^5``, ...

    Returns:
        The place's name.

    >>> [place_name(p) for p in range(6)]
    ['units', 'tens', 'hundreds', 'thousands', '10^4', '10^5']
    """
    return PLACE_NAMES[place] if place < len(PLACE_NAMES) else f"10^{place}"


def place_index(label: str) -> int | None:
    """Inverse of :func:`place_name` (None for a label that names no place, such as ``"token 2"``).

    Returns:
        The place (0 = units), or None.

    >>> place_index("hundreds"), place_index("10^5"), place_index("token 1")
    (2, 5, None)
    """
    if label in PLACE_NAMES:
        return PLACE_NAMES.index(label)
    if label.startswith("10^") and label[3:].isdigit():
        return int(label[3:])
    return None


def answer_digits(answer: str) -> str:
    """The digits of ``|answer|``, most significant first; the sign is dropped.

    Returns:
        The digits, as text.

    Raises:
        LensDigitsError: ``answer`` is not a decimal integer.

    >>> answer_digits("-120")
    '120'
    """
    digits = answer.strip().lstrip("-+")
    if not digits.isdigit():
        raise LensDigitsError(f"probes read decimal integer answers; cannot read digits from answer {answer!r}")
    return digits


def digit_labels(answers: Sequence[str], places: int) -> Int[Tensor, "problem place"]:
    """Digit at each place (column 0 = units) of each answer, leading zeros past its length.

    Places beyond ``places`` are dropped; check lengths first where that matters.

    Returns:
        A ``(problem, place)`` tensor of digits 0-9.

    Raises:
        LensDigitsError: An answer is not a decimal integer.

    >>> digit_labels(["7", "-42", "105"], 3).tolist()
    [[7, 0, 0], [2, 4, 0], [5, 0, 1]]
    """
    out = torch.zeros(len(answers), places, dtype=torch.long)
    for i, answer in enumerate(answers):
        digits = answer_digits(answer)[::-1][:places]
        out[i, : len(digits)] = torch.tensor([int(c) for c in digits], dtype=torch.long)
    return out
