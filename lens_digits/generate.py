"""The model's own greedy answers: what it says, right or wrong.

Greedy decoding runs batches of equal prompt length, one token at a time, and
stops a problem's answer at the first token that does not continue a number
(end of text, ``=``, a newline, ...) or after ``len(gold answer tokens) + 2``
tokens. The answer is what was decoded, stripped of spaces; it is correct when
it equals the gold answer exactly (so a model that goes on with an extra digit
is wrong here, while target ``answer``, which looks only at the gold answer's
own tokens, would count it right).
"""

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lens_digits.models import model_device, model_tokenizer
from lens_digits.targets import EncodedProblem

_NUMBER_PIECE = re.compile(r"^\s*-?\d*$")


@dataclass(frozen=True)
class GreedyOutput:
    """One problem's greedy answer."""

    token_ids: tuple[int, ...]
    text: str


def _continues_number(piece: str, so_far: str) -> bool:
    """Whether a decoded token extends the number being written (a sign only first, a space only first)."""
    if not piece or not _NUMBER_PIECE.match(piece) or (so_far and piece[0].isspace()):
        return False
    return any(c.isdigit() for c in piece) or (not so_far and piece.strip() == "-")


@torch.inference_mode()
def greedy_decode(
    forward: Callable[[Tensor], Tensor],
    prompts: Sequence[Sequence[int]],
    steps: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: bool = False,
) -> list[list[int]]:
    """Greedy continuations: ``steps[i]`` new token ids after prompt ``i``.

    ``forward`` maps a ``(batch, pos)`` token tensor to ``(batch, pos, vocab)``
    logits (a TransformerLens model, or a Hugging Face model wrapped in a
    lambda). Prompts of equal length are batched together, so no padding is
    needed; a batch runs for its longest ``steps``.
    """
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_len[len(p)].append(i)
    out: list[list[int]] = [[] for _ in prompts]
    bar = tqdm(total=len(prompts), desc="greedy answers", unit="problem", disable=not progress)
    for length in sorted(by_len):
        idx = by_len[length]
        for start in range(0, len(idx), batch_size):
            rows = idx[start : start + batch_size]
            tokens = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=device)  # (B, T)
            for _ in range(max(steps[i] for i in rows)):
                nxt = forward(tokens)[:, -1].argmax(-1)  # (B,)
                tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            for r, i in enumerate(rows):
                out[i] = tokens[r, length : length + steps[i]].tolist()
            bar.update(len(rows))
    bar.close()
    return out


def greedy_answers(
    model: Any,
    encoded: Sequence[EncodedProblem],
    *,
    batch_size: int = 64,
    extra_tokens: int = 2,
    progress: bool = False,
) -> list[GreedyOutput]:
    """Greedy-decode each prompt's answer.

    Returns, per problem, the answer tokens the model produced (at least one:
    the first generated token is kept even when it is not a digit, so the
    ``model`` target always has a position to read) and their text.
    """
    tokenizer = model_tokenizer(model)
    steps = [len(e.answer_ids) + extra_tokens for e in encoded]
    generated = greedy_decode(
        model, [e.prompt_ids for e in encoded], steps, device=model_device(model), batch_size=batch_size, progress=progress
    )
    out = []
    for gen in generated:
        kept: list[int] = []
        text = ""
        for t in gen:
            piece = tokenizer.decode([t])
            if not _continues_number(piece, text):
                break
            kept.append(t)
            text += piece
        out.append(GreedyOutput(tuple(kept or gen[:1]), text.strip()))
    return out
