"""Digit labels of answers: places, the first token's digits, chance and the probe control task."""

from collections import Counter
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from lens_digits.errors import LensDigitsError
from lens_digits.problems.digits import N_DIGITS, answer_digits, digit_labels
from lens_digits.problems.tasks import Problem
from lens_digits.residuals.collect import ResidualSet


def first_token_digits(data: ResidualSet) -> list[int]:
    """How many leading digits of each answer its first answer token covers.

    Taken from ``data.first_token_digits`` or ``data.info["first_token_digits"]``
    when present (one entry per problem of ``data``, in order). Otherwise it is
    derived without a tokenizer where that is unambiguous: a one-token answer is
    covered whole; any other answer counts as covering its most significant digit
    only (exact for one-digit-per-token tokenizers, an under-count for chunking
    ones). Values are clamped to ``1 .. len(digits)``: a first token holding only a
    sign or a space counts as covering the most significant digit.

    Returns:
        Per problem of ``data``, in order, the number of leading answer digits its first token covers.

    Raises:
        LensDigitsError: The given counts are not one per problem of ``data``.
    """
    given = getattr(data, "first_token_digits", None)
    if given is None:
        given = data.info.get("first_token_digits")
    lengths = [len(answer_digits(p.answer)) for p in data.problems]
    if given is None:
        given = [n if len(e.answer_ids) == 1 else 1 for n, e in zip(lengths, data.encoded, strict=True)]
    given = [int(k) for k in given]
    if len(given) != len(data):
        raise LensDigitsError(
            f"first_token_digits has {len(given)} entries but the residual set has {len(data)} problems; "
            "it must be aligned with the problems of the set being scored"
        )
    return [min(max(k, 1), n) for k, n in zip(given, lengths, strict=True)]


def digit_permutation(seed: int) -> list[int]:
    """The control task's relabelling of the ten digits: a seeded permutation that moves every digit.

    Returns:
        ``perm[d]``, the digit that replaces ``d``, for ``d`` in 0 to 9.

    >>> sorted(digit_permutation(0)) == list(range(10)) and all(d != i for i, d in enumerate(digit_permutation(0)))
    True
    """
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(N_DIGITS, generator=gen).tolist()
        if all(d != i for i, d in enumerate(perm)):
            return perm


def relabel(value: int, perm: Sequence[int]) -> int:
    """``value`` with each decimal digit ``d`` replaced by ``perm[d]`` (the sign kept).

    Returns:
        The relabelled integer.

    >>> relabel(-407, [1, 2, 3, 4, 5, 6, 7, 8, 9, 0])
    -518
    """
    digits = "".join(str(perm[int(c)]) for c in str(abs(value)))
    return -int(digits) if value < 0 else int(digits)


def control_answers(problems: Sequence[Problem], perm: Sequence[int]) -> list[str]:
    """The control task's answers: the same operation on the operands with their digits relabelled.

    A random but consistent function of the operands, built like the task: on a model
    with random weights (whose digit embeddings are exchangeable) it is exactly as hard to
    read as the real answer, and on a trained model it is not what the model computes.

    Returns:
        Per problem, the absolute value of the relabelled result, as a decimal string.

    Raises:
        LensDigitsError: A problem's operation is not registered.
    """
    from lens_digits.problems.operations import OPERATIONS

    out = []
    for p in problems:
        if p.op not in OPERATIONS:
            raise LensDigitsError(f"the probe control task needs operation {p.op!r} to be registered (ld.register_operation)")
        out.append(str(abs(int(OPERATIONS[p.op].fn(relabel(p.a, perm), relabel(p.b, perm))))))
    return out


def control_labels(problems: Sequence[Problem], perm: Sequence[int], places: int) -> Int[Tensor, "problem place"]:
    """Digit labels of the control task, units first, for ``places`` places.

    Returns:
        Per problem and place, the digit of its control answer (see :func:`~lens_digits.problems.digits.digit_labels`).
    """
    return digit_labels(control_answers(problems, perm), places)


def covered_places(target: str, lengths: Sequence[int], first_digits: Sequence[int] | None, width: int) -> Bool[Tensor, "problem place"]:
    """Places a target reads: all (``answer``), or the leading digits the first token holds (``first``).

    Returns:
        Per problem and place (units first, ``width`` places), whether the target reads it; all true
        when ``first_digits`` is None.
    """
    n = len(lengths)
    if first_digits is None:
        return torch.ones(n, width, dtype=torch.bool)
    k, length = torch.tensor(list(first_digits), dtype=torch.long), torch.tensor(list(lengths), dtype=torch.long)
    place = torch.arange(width)[None]
    return (place < length[:, None]) & (place >= (length - k)[:, None])


def majority_labels(labels: Tensor, cover: Tensor, scales: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """The most common covered label of each scale's train problems (ties: the smallest).

    Returns:
        Per digit scale, the most common tuple of covered digit labels.
    """
    counts: dict[int, Counter[tuple[int, ...]]] = {}
    for row, c, s in zip(labels, cover, scales, strict=True):
        counts.setdefault(s, Counter())[tuple(row[c].tolist())] += 1
    return {s: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for s, c in counts.items()}
