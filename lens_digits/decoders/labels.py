"""Digit labels of answers: places, the first token's digits, chance and the probe control task."""

from collections import Counter
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from lens_digits.errors import LensDigitsError
from lens_digits.residuals import ResidualSet
from lens_digits.tasks import Problem

N_DIGITS = 10
PLACE_NAMES = ("units", "tens", "hundreds", "thousands")


def place_name(place: int) -> str:
    """Name of digit place ``place`` (0 = units): ``units .. thousands``, then ``10^4``, ``10^5``, ...

    >>> [place_name(p) for p in range(6)]
    ['units', 'tens', 'hundreds', 'thousands', '10^4', '10^5']
    """
    return PLACE_NAMES[place] if place < len(PLACE_NAMES) else f"10^{place}"


def place_index(label: str) -> int | None:
    """Inverse of :func:`place_name` (None for a label that names no place, such as ``"token 2"``).

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

    >>> digit_labels(["7", "-42", "105"], 3).tolist()
    [[7, 0, 0], [2, 4, 0], [5, 0, 1]]
    """
    out = torch.zeros(len(answers), places, dtype=torch.long)
    for i, answer in enumerate(answers):
        digits = answer_digits(answer)[::-1][:places]
        out[i, : len(digits)] = torch.tensor([int(c) for c in digits], dtype=torch.long)
    return out


def first_token_digits(data: ResidualSet) -> list[int]:
    """How many leading digits of each answer its first answer token covers.

    Taken from ``data.first_token_digits`` or ``data.info["first_token_digits"]``
    when present (one entry per problem of ``data``, in order). Otherwise it is
    derived without a tokenizer where that is unambiguous: a one-token answer is
    covered whole; any other answer counts as covering its most significant digit
    only (exact for one-digit-per-token tokenizers, an under-count for chunking
    ones). Values are clamped to ``1 .. len(digits)``: a first token holding only a
    sign or a space counts as covering the most significant digit.
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
    """
    from lens_digits.operations import OPERATIONS

    out = []
    for p in problems:
        if p.op not in OPERATIONS:
            raise LensDigitsError(f"the probe control task needs operation {p.op!r} to be registered (ld.register_operation)")
        out.append(str(abs(int(OPERATIONS[p.op].fn(relabel(p.a, perm), relabel(p.b, perm))))))
    return out


def control_labels(problems: Sequence[Problem], perm: Sequence[int], places: int) -> Int[Tensor, "problem place"]:
    """Digit labels of the control task, units first, for ``places`` places."""
    return digit_labels(control_answers(problems, perm), places)


def covered_places(target: str, lengths: Sequence[int], first_digits: Sequence[int] | None, width: int) -> Bool[Tensor, "problem place"]:
    """Places a target reads: all (``answer``), or the leading digits the first token holds (``first``)."""
    n = len(lengths)
    if first_digits is None:
        return torch.ones(n, width, dtype=torch.bool)
    k, length = torch.tensor(list(first_digits), dtype=torch.long), torch.tensor(list(lengths), dtype=torch.long)
    place = torch.arange(width)[None]
    return (place < length[:, None]) & (place >= (length - k)[:, None])


def majority_labels(labels: Tensor, cover: Tensor, scales: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """The most common covered label of each scale's train problems (ties: the smallest)."""
    counts: dict[int, Counter[tuple[int, ...]]] = {}
    for row, c, s in zip(labels, cover, scales, strict=True):
        counts.setdefault(s, Counter())[tuple(row[c].tolist())] += 1
    return {s: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for s, c in counts.items()}
