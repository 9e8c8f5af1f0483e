"""Prompt templates: the named ones, the checks a custom one must pass, and where its operands sit in a prompt."""

import re
import string
from typing import TYPE_CHECKING, Any

from lens_digits.errors import LensDigitsError
from lens_digits.problems.operations import OPERATIONS

if TYPE_CHECKING:
    from lens_digits.problems.tasks import Problem

MAX_TEMPLATE_WIDTH = 64
"""Largest width or precision a template's format spec may ask for (``{a:>8}``)."""


TEMPLATES: dict[str, str] = {
    "compact": "{a}{op}{b}=",
    "spaced": "{a} {op} {b} = ",
    "calculate": "Calculate: {a} {op} {b} = ",
}
"""Named prompt templates. ``{op}`` is the operation's symbol (``+``, ``-``, ``*``)."""


def resolve_template(template: str) -> str:
    """Return the format string for a template name or check a custom one.

    Returns:
        The named template's format string, or ``template`` itself once checked.

    Raises:
        LensDigitsError: ``template`` is not a string, not a valid format string, has fields other than
            ``{a}``, ``{b}`` and ``{op}`` (or lacks ``{a}`` or ``{b}``), or has a nested, too wide or unusable format spec.

    >>> resolve_template("spaced")
    '{a} {op} {b} = '
    """
    if not isinstance(template, str):
        raise LensDigitsError(f"template must be a string, got {type(template).__name__}")
    template = TEMPLATES.get(template, template)
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise LensDigitsError(f"template {template!r} is not a valid format string ({e}); write fields as {{a}}, {{b}}, {{op}}") from None
    names = {f for f, _, _ in fields}
    if not {"a", "b"} <= names or not names <= {"a", "b", "op"}:
        raise LensDigitsError(
            f"template {template!r} must contain {{a}} and {{b}} (and may contain {{op}}) and no other "
            f"fields; or use a named one: {sorted(TEMPLATES)}"
        )
    for f, spec, _ in fields:
        if "{" in (spec or ""):
            raise LensDigitsError(f"template {template!r}: field {{{f}}} has a nested field in its format spec, which is not supported")
        widths = [int(w) for w in re.findall(r"\d+", spec or "")]
        if any(w > MAX_TEMPLATE_WIDTH for w in widths):
            raise LensDigitsError(
                f"template {template!r}: the format spec of {{{f}}} asks for width {max(widths):,}; the limit is {MAX_TEMPLATE_WIDTH}"
            )
    try:
        template.format(a=12, b=34, op="+")
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise LensDigitsError(f"template {template!r} cannot be filled in: {e}; check the format specs after ':'") from None
    return template


def operand_spans(problem: "Problem", template: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the operands of ``problem``'s question in its prompt (few-shot examples excluded).

    The prompt ends with ``template`` filled in with the problem's operands;
    each ``{a}`` and ``{b}`` field gives one span, in order.

    Returns:
        One ``(start, end)`` character span per ``{a}`` and ``{b}`` field of ``template``, in order.

    Raises:
        LensDigitsError: The prompt does not end with ``template`` filled in.

    >>> from lens_digits.problems.tasks import Problem
    >>> p = Problem(2, "add", 12, 34, "1+2=3 12+34=", "46", "test")
    >>> [p.prompt[s:e] for s, e in operand_spans(p, "{a}+{b}=")]
    ['12', '34']
    """
    template = resolve_template(template)
    values = {"a": problem.a, "b": problem.b, "op": OPERATIONS[problem.op].symbol if problem.op in OPERATIONS else problem.op}
    question = template.format(**values)
    if not problem.prompt.endswith(question):
        raise LensDigitsError(
            f"prompt {problem.prompt!r} does not end with template {template!r} filled in ({question!r}); "
            "give the template the problems were made with"
        )
    pos, spans = len(problem.prompt) - len(question), []
    for literal, field, spec, conv in string.Formatter().parse(template):
        pos += len(literal)
        if field is None:
            continue
        value: Any = values[field]
        converters: dict[str, Any] = {"r": repr, "s": str, "a": ascii}
        value = converters[conv](value) if conv else value
        text = format(value, spec or "")
        if field in ("a", "b"):
            spans.append((pos, pos + len(text)))
        pos += len(text)
    return spans
