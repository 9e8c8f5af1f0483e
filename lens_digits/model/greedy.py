"""The model's own greedy answers: what it says, right or wrong. One decoder for the whole package.

Greedy decoding runs batches of equal prompt length (no padding); see
:func:`_generator` for how each kind of model produces its tokens. Where an
answer stops is a rule:

- ``until="number"`` (sweeps: target ``model``, the ``solved`` subsets): at the
  first token that does not continue a number (end of text, ``=``, a newline,
  ...) or after the given number of tokens. The text is stripped of spaces; it
  is correct when it equals the gold answer exactly (so a model that goes on
  with an extra digit is wrong here, while target ``answer``, which looks only
  at the gold answer's own tokens, would count it right).
- ``until="eos"`` (the model card): everything before the end-of-sequence token.

It runs on a TransformerLens model (or its :class:`~lens_digits.model.adapter.ModelAdapter`)
or on a plain Hugging Face causal LM with its tokenizer.
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lens_digits.errors import LensDigitsError
from lens_digits.model.batching import length_batches

if TYPE_CHECKING:
    from lens_digits.model.kvcache import Finished

__all__ = ["GreedyOutput", "greedy_answers", "number_text"]
"""The one public greedy function is :func:`greedy_answers`; the rest is how it runs."""

_NUMBER_PIECE = re.compile(r"^\s*-?\d*$")


@dataclass(frozen=True)
class GreedyOutput:
    """One prompt's greedy answer: the tokens kept and their text."""

    token_ids: tuple[int, ...]
    text: str


def _continues_number(piece: str, so_far: str) -> bool:
    """Whether a decoded token extends the number being written (a sign only first, a space only first).

    Returns:
        True if ``piece`` continues the number written so far (``so_far``).
    """
    if not piece or not _NUMBER_PIECE.match(piece) or (so_far and piece[0].isspace()):
        return False
    return any(c.isdigit() for c in piece) or (not so_far and piece.strip() == "-")


@torch.inference_mode()
def _decode_in_batches(
    generate: Callable[[Tensor, int], Tensor],
    prompts: Sequence[Sequence[int]],
    steps: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: bool = False,
) -> list[list[int]]:
    """Greedy continuations: ``steps[i]`` new token ids after prompt ``i``.

    ``generate(tokens, n)`` returns ``n`` greedy new tokens after each row of a
    ``(batch, pos)`` tensor (the model's own cached ``generate``, see
    :func:`_generator`; it may return fewer once every row's answer is
    complete). Prompts of equal length are batched together, so no padding is
    needed; a batch runs for at most its longest ``steps``.

    Returns:
        The new token ids after each prompt, in the order of ``prompts``: at most ``steps[i]`` for prompt ``i``.
    """
    out: list[list[int]] = [[] for _ in prompts]
    bar = tqdm(total=len(prompts), desc="greedy answers", unit="problem", disable=not progress)
    for rows in length_batches([len(p) for p in prompts], batch_size):
        tokens = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=device)  # (B, T)
        new = generate(tokens, max(steps[i] for i in rows)).tolist()  # (B, n)
        for r, i in enumerate(rows):
            out[i] = new[r][: steps[i]]
        bar.update(len(rows))
    bar.close()
    return out


def _generator(model: Any, finished: "Finished | None" = None) -> tuple[Callable[[Tensor, int], Tensor], torch.device]:
    """``(tokens, n) -> up to n greedy new tokens`` for a model, and the device its tokens go to.

    A plain Hugging Face model generates with its own ``generate`` and key-value
    cache (after an end-of-sequence token it pads). A TransformerLens model
    decodes with :func:`lens_digits.model.kvcache.greedy_tokens`: a key-value cache
    where the model has one that agrees with running the whole sequence again
    (checked on its first batch; near ties are decided by the whole sequence),
    else the whole sequence at every step. Either way each pass stops at the
    final residual and reads out only the last position
    (:meth:`~lens_digits.model.adapter.ModelAdapter.last_logits`), and the tokens are
    those of decoding step by step. ``finished`` (TransformerLens models) stops
    a batch once every row's answer is complete (:data:`lens_digits.model.kvcache.Finished`).

    Returns:
        ``(generate, device)``: the function ``generate(tokens, n)``, which returns up to ``n`` greedy new
        tokens after each row of ``tokens``, and the device the prompt tokens must be on.
    """
    from lens_digits.model.adapter import ModelAdapter

    if isinstance(model, ModelAdapter) or hasattr(model, "cfg"):
        from lens_digits.model.kvcache import greedy_tokens

        adapter = ModelAdapter.wrap(model)
        return (lambda tokens, n: greedy_tokens(adapter, tokens, n, finished=finished)), adapter.device

    def cached(tokens: Tensor, n: int) -> Tensor:
        out = model.generate(input_ids=tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=n, do_sample=False, num_beams=1)
        return out[:, tokens.shape[1] :]

    return cached, next(model.parameters()).device


def greedy_answers(
    model: Any,
    prompts: Sequence[Sequence[int]],
    steps: Sequence[int] | int,
    *,
    until: Literal["number", "eos"] = "number",
    tokenizer: Any = None,
    batch_size: int = 64,
    progress: bool = False,
) -> list[GreedyOutput]:
    """Greedy-decode an answer after each prompt (token ids, BOS included where the model wants one).

    Args:
        model: A TransformerLens model, its adapter, or a Hugging Face causal LM (pass ``tokenizer``).
        prompts: Token ids of each prompt.
        steps: Most new tokens per prompt (one number for all, or one each).
        until: ``"number"``: stop where the text stops being a number, keeping at least
            the first token (so target ``model`` always has a position to read);
            ``"eos"``: keep what comes before the end-of-sequence token.
        tokenizer: The tokenizer (default: the TransformerLens model's).
        batch_size: Prompts per forward pass.
        progress: Show a progress bar.

    Returns:
        One answer per prompt, in order: with ``until="number"`` the tokens up to where the text stops being a number
        (at least the first) and that text, stripped; with ``until="eos"`` the tokens before the end-of-sequence token and their text.

    Raises:
        LensDigitsError: No ``tokenizer`` is passed and the model has none.
    """
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise LensDigitsError("greedy decoding needs a tokenizer: pass tokenizer= with a Hugging Face model")
    eos = tokenizer.eos_token_id

    def finished(new: Tensor) -> list[bool]:  # once every row's answer is complete, the rest would be cut anyway
        if until == "eos":
            return [eos in row for row in new.tolist()]
        return [_number_prefix(tokenizer, row)[2] for row in new.tolist()]

    generate, device = _generator(model, finished)
    per_prompt = [steps] * len(prompts) if isinstance(steps, int) else list(steps)
    generated = _decode_in_batches(generate, prompts, per_prompt, device=device, batch_size=batch_size, progress=progress)
    if until == "eos":
        kept = [g[: g.index(eos)] if eos in g else g for g in generated]
        return [GreedyOutput(tuple(k), tokenizer.decode(k)) for k in kept]
    return [number_text(tokenizer, gen) for gen in generated]


def number_text(tokenizer: Any, generated: Sequence[int]) -> GreedyOutput:
    """The tokens of ``generated`` up to where the text stops being a number (at least the first), and that text, stripped.

    Returns:
        The answer: those token ids and their text, stripped of spaces.
    """
    tokens, text, _ = _number_prefix(tokenizer, generated)
    return GreedyOutput(tuple(tokens or generated[:1]), text.strip())


def _number_prefix(tokenizer: Any, generated: Sequence[int]) -> tuple[list[int], str, bool]:
    """The tokens that write a number, their text, and whether a later token stopped it (so more tokens cannot change it).

    Returns:
        ``(tokens, text, stopped)``: the leading token ids of ``generated`` that write a number, their decoded text,
        and whether a token of ``generated`` that does not continue the number came after them.
    """
    tokens: list[int] = []
    text = ""
    for t in generated:
        piece = tokenizer.decode([t])
        if not _continues_number(piece, text):
            return tokens, text, True
        tokens.append(t)
        text += piece
    return tokens, text, False
