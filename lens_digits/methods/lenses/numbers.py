"""What a lens read, as numbers and digit places: numeric scores (``numeric``, ``abs_error``, ``within_k``) and ``place`` rows."""

import math
import re
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from lens_digits.methods.scores import Scores
from lens_digits.problems.digits import place_name
from lens_digits.residuals.collect import ResidualSet

_INTEGER = re.compile(r"[-+]?\d+")


def _number(text: str | None) -> float:
    """The integer ``text`` spells (surrounding spaces allowed), else NaN.

    Returns:
        The integer as a float, or NaN where ``text`` is None or not an integer.
    """
    if text is None:
        return math.nan
    text = text.strip()
    return float(int(text)) if _INTEGER.fullmatch(text) else math.nan


def numeric_scores(
    data: ResidualSet, top1: Int[Tensor, "problem layer pos"], target: str, text_of: Callable[[int], str], within: Sequence[int]
) -> dict[str, Tensor]:
    """``numeric``, ``abs_error`` (NaN where the read is not a number) and ``within_k`` per problem and layer.

    ``text_of`` gives a token's text (the lens's tokenizer, cached); ``within`` are the k of ``within_k``.

    A read is the top-1 tokens at a problem's answer positions; the same
    reads recur across problems and layers, so each distinct one (with its
    problem's answer prefix) is turned into text and parsed once.

    Returns:
        ``numeric``, ``abs_error`` and one ``within_k`` per k, each a float64 tensor of shape (problem, layer column).
    """
    n, n_columns, n_pos = top1.shape
    gold = torch.tensor([_number(p.model_output if target == "model" else p.answer) for p in data.problems], dtype=torch.float64)
    prefixes = [p.answer_prefix.strip() for p in data.problems]
    kinds = sorted(set(prefixes))
    kind = torch.tensor([kinds.index(x) for x in prefixes], dtype=torch.long)
    real = (data.target_ids[:, :n_pos] >= 0).cpu()[:, None, :]  # a read is the answer positions only
    ids = torch.where(real, top1, -1).reshape(n * n_columns, n_pos)
    keys = torch.cat([ids, kind.repeat_interleave(n_columns)[:, None]], dim=1)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True) if n else (keys, torch.zeros(0, dtype=torch.long))
    values = []
    for *tokens, k in unique.tolist():
        text = "".join(text_of(t) for t in tokens if t >= 0).strip()
        prefix = kinds[k]
        values.append(_number(text[len(prefix) :] if prefix and text.startswith(prefix) else text))
    read = torch.tensor(values, dtype=torch.float64)[inverse].reshape(n, n_columns)
    error = (read - gold[:, None]).abs()
    out = {"numeric": (~read.isnan()).double(), "abs_error": error}
    for k in within:
        out[f"within_{k}"] = (error <= k).double()  # NaN compares False: a non-number is never within
    return out


def place_scores(
    data: ResidualSet, top1: Int[Tensor, "problem layer pos"], rank: Tensor, logp: Tensor, text_of: Callable[[int], str]
) -> dict[str, Scores]:
    """Correctness of each digit place (one-digit tokens) or each answer token (other tokenizers).

    Returns:
        Scores by place (``units``, ...) or token (``token 1``, ...), each applying to the problems that have it.
    """
    gold = data.target_ids.cpu()
    n = gold.shape[0]
    labels, index = place_positions(gold, text_of)
    out = {}
    for r, label in enumerate(labels):
        has = index[:, r] >= 0
        pos = index[:, r].clamp(min=0)
        pick = pos[:, None, None].expand(n, top1.shape[1], 1)
        ok = top1.gather(2, pick)[..., 0] == gold.gather(1, pos[:, None])
        metrics = {"gold_rank": rank.gather(2, pick)[..., 0], "gold_prob": logp.gather(2, pick)[..., 0].exp()}
        out[label] = Scores(ok & has[:, None], metrics, applies=has)
    return out


def place_positions(gold: Int[Tensor, "problem pos"], text_of: Callable[[int], str]) -> tuple[list[str], Int[Tensor, "problem place"]]:
    """Which answer position holds each digit place (tokens of at most one digit), or each answer token (other tokenizers).

    Returns:
        ``(labels, index)``: the row labels (``units``, ... or ``token 1``, ...) and, per problem and label, the answer
        position holding it (-1 where the problem has none).
    """
    n, n_pos = gold.shape
    digits = [[sum(c.isdigit() for c in text_of(t)) for t in row if t >= 0] for row in gold.tolist()]
    by_place = all(d <= 1 for row in digits for d in row)
    index = torch.full((n, n_pos), -1, dtype=torch.long)  # index[i, r]: position of row r's token in problem i
    for i, row in enumerate(digits):
        if by_place:
            places = [sum(row[j + 1 :]) for j in range(len(row))]
            for j, (d, place) in enumerate(zip(row, places, strict=True)):
                if d:
                    index[i, place] = j
        else:
            index[i, : len(row)] = torch.arange(len(row))
    width = int((index >= 0).any(0).nonzero().max()) + 1 if (index >= 0).any() else 0
    return [place_name(r) if by_place else f"token {r + 1}" for r in range(width)], index[:, :width]
