"""The built-in model's recipe and its training data.

:class:`TrainConfig` is the recipe (the defaults are the shipped model's);
:func:`sample_problems` draws training problems written exactly as
:mod:`lens_digits.problems.tasks` writes them with the ``compact`` template
(``12+34=``), which :func:`lens_digits.builtin.train.encode_batch` turns into tokens and
labels (``<s>12+34=46</s>``, loss on the answer and EOS only). Importing this
module loads no torch, so the command line's help stays fast.
"""

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lens_digits.errors import LensDigitsError
from lens_digits.model.tokenizers import SPECIALS, word_tokenizer
from lens_digits.problems.operations import OPERATIONS, operand_range
from lens_digits.problems.tasks import TEMPLATES, format_answer, parse_scales
from lens_digits.settings import known_fields, option

CHARS = "0123456789+-*= \n"
"""Characters of the vocabulary: digits, the operation symbols, ``=``, space and newline."""

TEMPLATE = TEMPLATES["compact"]


@dataclass
class TrainConfig:
    """Recipe of the built-in model. The defaults are the shipped model's.

    Args:
        n_layers: Transformer blocks.
        d_model: Width of the residual stream.
        n_heads: Attention heads (``d_model`` must be a multiple).
        d_mlp: Hidden width of each SwiGLU MLP (default ``4 * d_model``).
        n_ctx: Longest input, in tokens (rotary positions; nothing is learned per position).
        scales: Digit scales of training problems (``[1, 2, 3]`` or ``"1-3"``).
        ops: Operations trained on (``add``, ``sub``, ``mul``), a list or comma-separated.
        mixed: Fraction of examples whose two operands draw their lengths independently.
        steps: Optimiser steps.
        batch_size: Problems per step.
        lr: Peak learning rate (AdamW); linear warm-up, then cosine decay to ``lr / 10``
            (transformers' ``get_cosine_with_min_lr_schedule_with_warmup``).
        warmup: Warm-up steps (default ``min(200, steps // 10)``).
        weight_decay: AdamW weight decay (matrices only).
        seed: Seeds the weights and the training problems.
    """

    n_layers: int = option(4, "transformer blocks", flag="--layers")
    d_model: int = option(96, "residual stream width")
    n_heads: int = option(4, "attention heads", flag="--heads")
    d_mlp: int | None = option(None, "MLP hidden width (default: 4 x --d-model)", type=int)
    n_ctx: int = option(128, "longest input in tokens")
    scales: Sequence[int] | str = option((1, 2, 3), "digit scales of the training problems", metavar="SCALES")
    ops: Sequence[str] | str = option(("add",), "operations, comma-separated: add, sub, mul", metavar="OPS")
    mixed: float = option(0.2, "fraction of problems whose operands differ in length")
    steps: int = option(3000, "optimiser steps")
    batch_size: int = option(128, "problems per step")
    lr: float = option(1e-3, "peak learning rate (AdamW, warm-up then cosine decay)")
    warmup: int | None = option(None, "warm-up steps (default: min(200, steps / 10))", type=int)
    weight_decay: float = option(0.1, "AdamW weight decay on matrices")
    seed: int = option(0, "seed of the weights and the training problems")

    def __post_init__(self) -> None:
        """Validate every field.

        Raises:
            LensDigitsError: A size, ``steps`` or ``batch_size`` is not a positive integer; ``d_model`` is not a
                multiple of ``n_heads`` or the head width is odd; no op is given or one is not ``add``, ``sub`` or
                ``mul``; the longest scale's problems do not fit ``n_ctx``; ``mixed`` is outside 0 to 1; ``lr`` is
                not a positive number; ``warmup`` or ``weight_decay`` is negative; or ``seed`` is not an integer.
        """
        if self.d_mlp is None and isinstance(self.d_model, int):
            self.d_mlp = 4 * self.d_model
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LensDigitsError(f"{name} must be a positive integer, got {value!r}")
        if self.warmup is None:
            self.warmup = min(200, self.steps // 10)
        if self.d_model % self.n_heads:
            raise LensDigitsError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise LensDigitsError(f"the head width d_model/n_heads = {self.d_model // self.n_heads} must be even (rotary positions)")
        self.scales = tuple(parse_scales(self.scales))  # type: ignore[arg-type]
        ops = [o.strip() for o in self.ops.split(",") if o.strip()] if isinstance(self.ops, str) else list(self.ops)
        if not ops:
            raise LensDigitsError("no operations given; train on at least one, e.g. add")
        for op in ops:
            if op not in OPERATIONS or op not in ("add", "sub", "mul"):
                raise LensDigitsError(f"unknown op {op!r}; the built-in model trains on add, sub and mul")
        self.ops = tuple(dict.fromkeys(ops))
        longest = max(self.scales)
        need = 1 + 2 * longest + 2 + 2 * longest + 1
        if need > self.n_ctx:
            raise LensDigitsError(f"scale {longest} problems need {need} tokens but n_ctx is {self.n_ctx}; raise n_ctx")
        if not 0.0 <= self.mixed <= 1.0:
            raise LensDigitsError(f"mixed must be a fraction from 0 to 1, got {self.mixed!r}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise LensDigitsError(f"lr must be a positive number, got {self.lr!r}")
        if self.warmup < 0 or self.weight_decay < 0:
            raise LensDigitsError("warmup and weight_decay must not be negative")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise LensDigitsError(f"seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready recipe.

        Returns:
            Every field by name, ``scales`` and ``ops`` as lists.
        """
        d = dataclasses.asdict(self)
        d["scales"] = list(self.scales)
        d["ops"] = list(self.ops)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys (from a newer version) are skipped with a warning.

        Returns:
            The recipe, validated as on construction.
        """
        return cls(**known_fields(cls, d))


RECIPES: dict[str, dict[str, Any]] = {
    "arith-llama": {},
    "arith-llama-28": {
        "n_layers": 28,
        "d_model": 96,
        "n_heads": 4,
        "scales": (1, 2, 3, 4),
        "steps": 5000,
        "lr": 7e-4,
        "warmup": 300,
    },
}
"""The recipes of the shipped models, as the settings that differ from :class:`TrainConfig`'s defaults
(``lens-digits train-model --recipe NAME``; flags given beside it override it)."""


def recipe(name: str, **overrides: Any) -> TrainConfig:
    """The recipe of a shipped model, with ``overrides``.

    Returns:
        The :class:`TrainConfig`.

    Raises:
        LensDigitsError: No shipped model has that name, or an override is invalid.
    """
    if name not in RECIPES:
        raise LensDigitsError(f"no recipe {name!r}; the shipped models' recipes are {', '.join(RECIPES)}")
    return TrainConfig(**{**RECIPES[name], **overrides})


def builtin_tokenizer() -> Any:
    """The built-in model's tokenizer: one token per character of ``CHARS``.

    ``<s>`` is BOS, ``</s>`` EOS, ``<pad>`` padding and ``<unk>`` any other
    character. Like Llama's tokenizers it puts BOS before a text (the model was
    trained with it), so plain ``transformers`` code (``tok(prompt)``, then
    ``generate``) feeds what the model expects; ``add_special_tokens=False``
    gives the bare characters, as :mod:`lens_digits` uses them.

    Returns:
        A fast Hugging Face tokenizer over the special tokens and ``CHARS``.

    >>> tok = builtin_tokenizer()
    >>> tok("12+3=")["input_ids"], tok("12+3=", add_special_tokens=False)["input_ids"]
    ([1, 5, 6, 14, 7, 17], [5, 6, 14, 7, 17])
    """
    return word_tokenizer(list(CHARS), add_bos=True, model_max_length=128)


def char_ids() -> dict[str, int]:
    """Token id of each special token and character.

    Returns:
        A map from each special token and character of ``CHARS`` to its id in :func:`builtin_tokenizer`.
    """
    return {t: i for i, t in enumerate([*SPECIALS, *CHARS])}


def sample_problems(rng: np.random.Generator, n: int, config: TrainConfig) -> list[tuple[str, str]]:
    """Draw ``n`` training problems as ``(prompt, answer)`` strings.

    Returns:
        ``n`` pairs of prompt (``12+34=``) and answer, drawn with ``rng``.

    >>> c = TrainConfig(scales=[2], mixed=0.0)
    >>> prompt, answer = sample_problems(np.random.default_rng(0), 1, c)[0]
    >>> len(prompt), int(prompt[:2]) + int(prompt[3:5]) == int(answer)
    (6, True)
    """
    ops = rng.choice(len(config.ops), size=n)
    scale_a = rng.choice(np.asarray(config.scales), size=n)
    scale_b = np.where(rng.random(n) < config.mixed, rng.choice(np.asarray(config.scales), size=n), scale_a)
    out = []
    for i in range(n):
        op = OPERATIONS[config.ops[ops[i]]]
        lo_a, hi_a = operand_range(int(scale_a[i]))
        lo_b, hi_b = operand_range(int(scale_b[i]))
        a = int(rng.integers(lo_a, hi_a + 1))
        b = int(rng.integers(lo_b, hi_b + 1))
        if op.name == "sub" and a < b:
            a, b = b, a
        out.append((TEMPLATE.format(a=a, b=b, op=op.symbol), format_answer(op.fn(a, b))))
    return out
