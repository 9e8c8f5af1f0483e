"""Arithmetic problems grouped by digit scale, with seeded train/val/test splits.

A *digit scale* ``d`` means both operands have exactly ``d`` digits
(``10**(d-1) .. 10**d - 1``), except scale 1, which includes 0 (``0..9``).
Problems at one scale are distinct ``(a, b)`` pairs, so the three splits never
share a pair, and problems at different scales never share one either.

Generation is deterministic: each scale draws from its own random stream seeded
by ``(seed, scale, op)``, so scale 3's problems are the same whether or not
scale 2 was asked for too.
"""

import dataclasses
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lens_digits._stack import user_stacklevel
from lens_digits.errors import LensDigitsError
from lens_digits.problems.operations import OPERATIONS, Operation, draw_pairs, n_distinct, operand_range, pair_filter, register_operation
from lens_digits.problems.templates import MAX_TEMPLATE_WIDTH, TEMPLATES, operand_spans, resolve_template
from lens_digits.settings import known_fields, option

MAX_SCALE = 18
"""Largest digit scale: operands and results stay exact in 64-bit integers."""

MAX_PER_SCALE = 100_000
"""Most problems per scale a task may ask for (bounds memory before anything is drawn)."""


SPLITS = ("train", "val", "test")
SPLIT_ORDER: tuple[Literal["test", "train", "val"], ...] = ("test", "train", "val")
"""The order problems are drawn in, per scale (after any few-shot examples)."""


__all__ = [
    "MAX_PER_SCALE",
    "MAX_SCALE",
    "MAX_TEMPLATE_WIDTH",
    "OPERATIONS",
    "SPLITS",
    "TEMPLATES",
    "Operation",
    "Problem",
    "TaskConfig",
    "format_answer",
    "generate_problems",
    "n_distinct",
    "operand_range",
    "operand_spans",
    "parse_scales",
    "register_operation",
    "resolve_template",
]


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem, as written to ``prompts.jsonl``.

    ``model_output`` and ``model_correct`` hold the model's greedy answer once a
    sweep has computed it (target ``model`` or a ``solved``/``unsolved`` subset).
    """

    scale: int
    op: str
    a: int
    b: int
    prompt: str
    answer: str
    split: Literal["train", "val", "test"]
    answer_prefix: str = ""
    model_output: str | None = None
    model_correct: bool | None = None
    seed: int | None = None
    """The seed of the draw the problem comes from (several with ``seeds=``)."""
    patch_source: str | None = None
    """Method ``patch``: the prompt of the problem whose activations were patched into this one."""
    model_ran: bool | None = None
    """Whether a sweep ran the model on this prompt (test problems always; train and validation problems only for
    methods that fit, such as probes). None outside a sweep."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with the run-directory fields.

        Returns:
            Every field of the problem, by name.
        """
        return dataclasses.asdict(self)


@dataclass
class TaskConfig:
    """What problems to generate.

    Args:
        scales: Digit scales, each from 1 to ``MAX_SCALE``.
        n_per_scale: Test problems per scale: the problems every decoder is scored on.
        n_train: Train problems per scale, for decoders that fit (probes); default
            ``3 * n_per_scale``. Only decoders that fit run the model on them.
        n_val: Validation problems per scale (choosing a probe's regularisation);
            default ``n_per_scale``.
        op: Operation name from ``OPERATIONS`` (``add``, ``sub``, ``mul``).
        template: A ``TEMPLATES`` name or a format string with ``{a}``, ``{b}``
            and optionally ``{op}``. The answer is appended right after it.
        answer_prefix: Text the model must write before the digits, part of the
            answer's tokens (``" "`` for GPT-2-style BPE, whose numbers carry
            their leading space: template ``"{a} + {b} ="`` with prefix ``" "``).
        few_shot: Number of solved examples put before every prompt. They are
            drawn once per scale and never appear as problems.
        few_shot_separator: Joins the examples and the prompt.
        seed: Seed of the generator.
        allow_negative: For ``sub``: if False (default) only pairs with
            ``a >= b`` are drawn, so results are non-negative; if True any pair,
            and negative answers are written with a leading ``-``.
        on_short: When a scale has fewer distinct problems than asked for (scale 1
            addition has 100): ``"warn"`` shares all of them out in proportion
            (test, train, validation) and warns, ``"error"`` raises. Duplicates
            are never drawn.

    Problems are drawn per scale as one stream of distinct pairs: few-shot
    examples first, then test, train and validation problems, so the test
    problems are the same whatever ``n_train`` and ``n_val`` are.
    """

    scales: Sequence[int] | str | int = option((1, 2, 3, 4), "digit scales: a range '1-4' or a list '1,2,5'", metavar="SCALES")
    n_per_scale: int = option(200, "test problems per scale: the problems every decoder is scored on", flag="--n")
    n_train: int | None = option(None, "train problems per scale, for decoders that fit (probes) (default: 3 x --n)", type=int)
    n_val: int | None = option(None, "validation problems per scale, for decoders that fit (default: --n)", type=int)
    op: str = option("add", "operation: add, sub, mul or a registered one")
    template: str = option("compact", "prompt template: compact, spaced, calculate, or a format string with {a}, {b} and {op}")
    answer_prefix: str = option("", "text before the answer's digits that belongs to the answer (' ' for GPT-2-style BPE)")
    few_shot: int = option(0, "solved examples before each prompt")
    few_shot_separator: str = option("\n", "joins few-shot examples and the prompt", cli=False)
    seed: int = option(0, "seed of the problems and of the decoders")
    allow_negative: bool = option(False, "sub: allow negative results (default: a >= b only)")
    on_short: Literal["warn", "error"] = option("warn", "when a scale has too few distinct problems", cli=False)

    def __post_init__(self) -> None:
        """Validate every field.

        Raises:
            LensDigitsError: A field is out of range or unknown: the scales, ``n_per_scale``, ``seed``, ``op``,
                ``template``, ``few_shot``, ``n_train``, ``n_val`` or ``on_short``.
        """
        self.scales = tuple(parse_scales(self.scales))
        if isinstance(self.n_per_scale, bool) or not isinstance(self.n_per_scale, int) or self.n_per_scale < 1:
            raise LensDigitsError(f"n_per_scale must be a positive integer, got {self.n_per_scale!r}")
        if self.n_per_scale > MAX_PER_SCALE:
            raise LensDigitsError(f"n_per_scale is {self.n_per_scale:,}, above the limit of {MAX_PER_SCALE:,} problems per scale")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise LensDigitsError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.op not in OPERATIONS:
            raise LensDigitsError(f"unknown op {self.op!r}; choose one of {sorted(OPERATIONS)}")
        self.template = resolve_template(self.template)
        if isinstance(self.few_shot, bool) or not isinstance(self.few_shot, int) or self.few_shot < 0:
            raise LensDigitsError(f"few_shot must be a non-negative integer, got {self.few_shot!r}")
        if self.few_shot > 1000:
            raise LensDigitsError(f"few_shot is {self.few_shot}, above the limit of 1000 examples per prompt")
        for name in ("n_train", "n_val"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, 3 * self.n_per_scale if name == "n_train" else self.n_per_scale)
            elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3 * MAX_PER_SCALE:
                raise LensDigitsError(f"{name} must be an integer from 0 to {3 * MAX_PER_SCALE:,}, got {value!r}")
        if self.on_short not in ("warn", "error"):
            raise LensDigitsError(f"on_short must be 'warn' or 'error', got {self.on_short!r}")

    @property
    def scale_list(self) -> list[int]:
        """The digit scales, validated and sorted."""
        return parse_scales(self.scales)

    @property
    def counts(self) -> dict[str, int]:
        """Problems asked for per scale: ``{"test": ..., "train": ..., "val": ...}``."""
        return {"test": self.n_per_scale, "train": int(self.n_train or 0), "val": int(self.n_val or 0)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings.

        Returns:
            Every field by name, with ``scales`` as a sorted list.
        """
        d = dataclasses.asdict(self)
        d["scales"] = self.scale_list
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskConfig":
        """Inverse of :meth:`to_dict`; unknown keys (from another version, such as ``split``) are skipped with a warning.

        Returns:
            The task configuration, validated.
        """
        return cls(**known_fields(cls, d))


def parse_scales(scales: Any) -> list[int]:
    """Parse ``"1-4"``, ``"1,3,5"``, ``3`` or ``[1, 2]`` into a sorted list of scales.

    Returns:
        The distinct scales, in increasing order.

    Raises:
        LensDigitsError: The scales cannot be read, a range runs backwards, none is given, or a scale is not from 1 to ``MAX_SCALE``.

    >>> parse_scales("1-3,5")
    [1, 2, 3, 5]
    """
    if isinstance(scales, str):
        out: list[int] = []
        for part in scales.replace(" ", "").split(","):
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                bounds = [int(lo), int(hi)] if sep else [int(part)]
            except ValueError:
                raise LensDigitsError(f"cannot read digit scales {scales!r}; write them like '1-4' or '1,2,5'") from None
            for s in bounds:
                _check_scale(s)
            if sep and bounds[0] > bounds[1]:
                raise LensDigitsError(f"digit scale range {part!r} runs backwards; write it low to high, e.g. '{hi}-{lo}'")
            out.extend(range(bounds[0], bounds[-1] + 1))
        scales = out
    elif isinstance(scales, int):
        scales = [scales]
    try:
        result = sorted(set(scales), key=float)
    except (TypeError, ValueError):
        raise LensDigitsError(f"cannot read digit scales {scales!r}; give integers like [1, 2, 3] or '1-4'") from None
    if not result:
        raise LensDigitsError("no digit scales given; ask for at least one, e.g. '1-4'")
    for s in result:
        _check_scale(s)
    return [int(s) for s in result]


def _check_scale(s: Any) -> None:
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 1 <= s <= MAX_SCALE:
        raise LensDigitsError(
            f"impossible digit scale {s!r}: a scale is the number of digits of each operand, an integer from 1 to {MAX_SCALE}"
        )


def share_out(available: int, wanted: dict[str, int]) -> dict[str, int]:
    """Counts that fit in ``available``, in proportion to ``wanted`` (test gets at least one).

    Returns:
        The count of each split in ``wanted``: ``wanted`` itself if it fits.

    >>> share_out(100, {"test": 200, "train": 600, "val": 200})
    {'test': 20, 'train': 60, 'val': 20}
    """
    total = sum(wanted.values())
    if total <= available:
        return dict(wanted)
    out = {k: int(available * v // total) for k, v in wanted.items()}
    out["test"] = max(1, out["test"])
    for k in sorted(wanted, key=lambda k: -wanted[k]):  # hand out what rounding left, largest share first
        if sum(out.values()) >= available:
            break
        if out[k] < wanted[k]:
            out[k] += 1
    return out


def format_answer(value: int) -> str:
    """The answer string: plain decimal, ``-`` for negatives.

    Returns:
        ``value`` in decimal.
    """
    return str(value)


def generate_problems(config: TaskConfig) -> list[Problem]:
    """Generate the problems of every scale, deterministically.

    Returns:
        The problems, scale by scale in increasing order; within a scale, test, then train, then validation problems.

    Raises:
        LensDigitsError: A scale has too few distinct problems, with ``on_short="error"`` or too few left after
            the few-shot examples; or a sampled scale's rule accepts too few pairs.

    >>> ps = generate_problems(TaskConfig(scales=[2], n_per_scale=10, seed=0))
    >>> len(ps), ps[0].prompt.endswith("="), [sum(p.split == s for p in ps) for s in ("test", "train", "val")]
    (50, True, [10, 30, 10])
    """
    operation = OPERATIONS[config.op]
    keep = pair_filter(config.op, config.allow_negative)
    problems: list[Problem] = []
    for scale in config.scale_list:
        available = n_distinct(scale, config.op, config.allow_negative)
        wanted = config.counts
        counts = dict(wanted)
        if available is not None and sum(wanted.values()) + config.few_shot > available:
            msg = (
                f"scale {scale} has only {available} distinct {config.op} problems but {wanted['test']} test, {wanted['train']} "
                f"train and {wanted['val']} validation problems (+{config.few_shot} few-shot examples) were asked for"
            )
            if config.on_short == "error":
                raise LensDigitsError(msg + "; lower n_per_scale or drop this scale")
            if available - config.few_shot < 1 + (wanted["train"] > 0) + (wanted["val"] > 0):
                raise LensDigitsError(msg + "; too few are left for test, train and validation problems: lower few_shot")
            counts = share_out(available - config.few_shot, wanted)
            warnings.warn(
                msg + f"; using {counts['test']} test, {counts['train']} train and {counts['val']} validation, each once",
                stacklevel=user_stacklevel(),
            )
        crc = zlib.crc32(config.op.encode())
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, scale, crc]))
        pairs = draw_pairs(rng, scale, config.few_shot + sum(counts.values()), keep, f"{config.op} pairs")
        shots, pairs = pairs[: config.few_shot], pairs[config.few_shot :]
        prefix = "".join(
            config.template.format(a=a, b=b, op=operation.symbol)
            + config.answer_prefix
            + format_answer(operation.fn(a, b))
            + config.few_shot_separator
            for a, b in shots
        )
        splits: list[Literal["train", "val", "test"]] = []
        for name in SPLIT_ORDER:
            splits += [name] * counts[name]
        for (a, b), split in zip(pairs, splits, strict=True):
            prompt = prefix + config.template.format(a=a, b=b, op=operation.symbol)
            answer = format_answer(operation.fn(a, b))
            problems.append(Problem(scale, config.op, a, b, prompt, answer, split, config.answer_prefix, seed=config.seed))
    return problems
