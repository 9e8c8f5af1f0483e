"""Encoding problems: tokenizer-correct answer token ids, BOS, chat templates and the context check.

The answer's tokens are whatever the model would have to produce after the
prompt, which depends on the tokenizer: one token per digit (Llama-2, Qwen,
Mistral, Gemma), chunks of up to three digits (Llama-3), or BPE merges with a
glued leading space (GPT-2). They are found by tokenizing ``prompt`` and
``prompt + answer`` and taking the suffix. If the prompt's own tokens change at
the boundary (the tokenizer merges the answer's start into the prompt's last
token), no suffix is the answer and :class:`BoundaryMergeError` says so.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lens_digits.errors import BoundaryMergeError, ContextLengthError, LensDigitsError
from lens_digits.problems.tasks import Problem

if TYPE_CHECKING:
    from lens_digits.model.adapter import ModelAdapter


TARGETS: tuple[str, ...] = ("first", "answer", "model")
"""``first``: first answer token at the last prompt position. ``answer``: every
answer token, teacher-forced. ``model``: every token of the model's own greedy
answer, teacher-forced (where each layer agrees with what the model will say)."""


def parse_targets(target: str | Sequence[str]) -> list[str]:
    """``"first"``, ``"answer"``, ``"model"``, ``"both"`` (first and answer), ``"all"``, or a list.

    Returns:
        The targets named, each once, in the order given.

    Raises:
        LensDigitsError: A target is unknown, or none is given.

    >>> parse_targets("both")
    ['first', 'answer']
    """
    if isinstance(target, str):
        target = {"both": ["first", "answer"], "all": list(TARGETS)}.get(target, [t.strip() for t in target.split(",") if t.strip()])
    targets = list(dict.fromkeys(target))
    for t in targets:
        if t not in TARGETS:
            raise LensDigitsError(f"unknown target {t!r}; choose {', '.join(TARGETS)}, both or all")
    if not targets:
        raise LensDigitsError("no target given; choose first, answer, model, both or all")
    return targets


@dataclass(frozen=True)
class EncodedProblem:
    """Token ids of one problem: ``prompt_ids + answer_ids`` is the teacher-forced input."""

    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    first_token_digits: int | None = None
    """How many digits of the answer its first token holds (1 per digit tokenizers, up to 3 Llama-3, more BPE)."""

    @property
    def length(self) -> int:
        """Tokens in prompt plus answer."""
        return len(self.prompt_ids) + len(self.answer_ids)


def _ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def encode_problems(
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    bos_token_id: int | None = None,
) -> list[EncodedProblem]:
    """Token ids of each prompt and of its answer.

    Args:
        tokenizer: A Hugging Face tokenizer (callable returning ``input_ids``).
        prompts: Prompt strings.
        answers: Answer strings, appended to the prompts as they are.
        bos_token_id: Put before every prompt when given (the model's BOS policy).

    Returns:
        One encoded problem per prompt, in order: the BOS (if given) and the prompt's ids, then the answer's ids.

    Raises:
        BoundaryMergeError: The tokenizer merges the answer into the prompt.
        LensDigitsError: An answer adds no tokens after its prompt.
        ValueError: ``prompts`` and ``answers`` differ in length.

    >>> from lens_digits.testing import char_tokenizer
    >>> encode_problems(char_tokenizer(), ["12+3="], ["15"])[0].answer_ids == tuple(char_tokenizer()("15")["input_ids"])
    True
    """
    if len(prompts) != len(answers):
        raise ValueError("prompts and answers differ in length")
    prompt_ids = _ids(tokenizer, prompts)
    full_ids = _ids(tokenizer, [p + a for p, a in zip(prompts, answers, strict=True)])
    bos = [] if bos_token_id is None else [int(bos_token_id)]
    out = []
    for prompt, answer, p, f in zip(prompts, answers, prompt_ids, full_ids, strict=True):
        if f[: len(p)] != p:
            tail = _show(tokenizer, p[-2:])
            merged = _show(tokenizer, f[max(0, len(p) - 2) : len(p) + 1])
            raise BoundaryMergeError(
                f"the tokenizer merges the answer into the prompt: {prompt!r} ends with tokens {tail}, "
                f"but {prompt + answer!r} has {merged} there. Change the template so the prompt ends "
                f"where a token must end (for a BPE tokenizer such as GPT-2's, move a trailing space "
                f"from the template into the answer prefix: template '{{a}} + {{b}} =' with answer_prefix ' ')."
            )
        if len(f) == len(p):
            raise LensDigitsError(f"answer {answer!r} adds no tokens after prompt {prompt!r}; check the tokenizer")
        answer_ids = tuple(f[len(p) :])
        first_digits = sum(c.isdigit() for c in tokenizer.decode([answer_ids[0]]))
        out.append(EncodedProblem(tuple(bos + p), answer_ids, first_digits))
    return out


def _show(tokenizer: Any, ids: Sequence[int]) -> str:
    return "[" + ", ".join(repr(tokenizer.decode([i])) for i in ids) + "]"


def chat_prompt(tokenizer: Any, prompt: str) -> str:
    """``prompt`` as the user turn of the tokenizer's chat template, ready for the assistant's answer.

    Returns:
        The templated text, ending with the generation prompt.

    Raises:
        LensDigitsError: The tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise LensDigitsError("chat=True needs a tokenizer with a chat template; this one has none (use a plain template)")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def encode_checked(
    tokenizer: Any, problems: Sequence[Problem], bos_token_id: int | None, n_ctx: int | None, chat: bool = False
) -> list[EncodedProblem]:
    """Encode problems and check that each fits in a context of ``n_ctx`` tokens.

    With ``chat`` the prompts are wrapped in the chat template, which carries
    its own BOS text, so no BOS id is added.

    Returns:
        One encoded problem per problem, in order; the answer is the problem's ``answer_prefix`` and ``answer``.

    Raises:
        ContextLengthError: A prompt plus its answer is longer than ``n_ctx`` tokens.
        BoundaryMergeError: The tokenizer merges an answer into its prompt.
        LensDigitsError: ``chat`` and the tokenizer has no chat template, or an answer adds no tokens.
    """
    prompts = [chat_prompt(tokenizer, p.prompt) if chat else p.prompt for p in problems]
    answers = [p.answer_prefix + p.answer for p in problems]
    encoded = encode_problems(tokenizer, prompts, answers, None if chat else bos_token_id)
    longest = max(range(len(encoded)), key=lambda i: encoded[i].length, default=None)
    if longest is not None and n_ctx is not None and encoded[longest].length > n_ctx:
        p = problems[longest]
        raise ContextLengthError(
            f"prompt plus answer of {p.prompt + p.answer_prefix + p.answer!r} is {encoded[longest].length} tokens, longer than "
            f"the model's context of {n_ctx}; use fewer few-shot examples, smaller digit scales or a shorter template"
        )
    return encoded


def encode_for_model(
    model: "ModelAdapter", problems: Sequence[Problem], prepend_bos: bool | None = None, chat: bool = False
) -> list[EncodedProblem]:
    """Encode problems with the model's tokenizer and BOS policy; check the context length.

    ``prepend_bos`` None follows the model's ``cfg.default_prepend_bos``.

    Returns:
        One encoded problem per problem, in order.

    Raises:
        ContextLengthError: A prompt plus its answer is longer than the model's context.
        BoundaryMergeError: The tokenizer merges an answer into its prompt.
    """
    return encode_checked(model.tokenizer, problems, model.bos_id(prepend_bos), model.n_ctx, chat=chat)
