"""Activation patching per layer: where the model decides the answer, not only where it can be read.

An intervention runs the model itself, so it has its own kind of method beside
the decoders (which only ever see residuals): an
:class:`~lens_digits.methods.base.Intervention` scores test problems with the
model in hand, and a sweep puts its scores on the same grid.

:class:`ActivationPatching` (method ``patch``) is the interchange intervention
of arithmetic papers (Stolfo et al. 2023). Each test problem ``t`` gets a
*source* ``s``: another test problem of the same digit scale, with a prompt of
the same token length and a different answer, drawn with the seed. For each
layer column ``l`` (``0..n_layers``, the grid's layer axis), ``t``'s prompt is
run with the residual at column ``l`` and the last prompt position replaced by
``s``'s residual there (taken from the residuals the sweep already collected,
so the source is never run again), and the model's answer is read:

- target ``first``: the patched model's next token (its argmax) after the prompt;
- target ``answer``: its whole greedy answer (step by step, the patch held at
  its position; the text stops where it stops being a number, as for target
  ``model``).

A cell's accuracy is the *flip rate*: the share of pairs where the patched
model gives ``s``'s answer. ``keep`` is the share that still gives ``t``'s,
``neither`` the rest. Patching the final residual (column ``n_layers``) flips
every first token; patching column 0 at the last prompt position swaps the
embedding of the same token at the same position, so it flips nothing: both
are tested, on several families.

:class:`OperandPatching` (method ``patch_operands``) patches the positions of
the question's operands instead (every token whose text overlaps ``a`` or
``b``, few-shot examples excluded), all of them at once, with ``s``'s residuals
there (one extra forward pass over the sources collects them). A source then
also has its operands at the same token positions. On one grid the two show
the answer's information moving from the operands to the last prompt token:
at column 0 patching the operands is running ``s``'s own question (the flip
rate is the model's accuracy on ``s``); at the final column it changes nothing
(no later layer reads the operand positions any more).

Pairs are recorded: each test problem's ``patch_source`` in ``prompts.jsonl``
is its source's prompt.
"""

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens_digits.errors import LensDigitsError
from lens_digits.methods.base import Intervention, register_method
from lens_digits.methods.interventions.examples import PatchingExamples
from lens_digits.methods.scores import Scores, Target
from lens_digits.model.adapter import ModelAdapter
from lens_digits.model.batching import length_batches
from lens_digits.model.greedy import number_text
from lens_digits.model.kvcache import greedy_tokens
from lens_digits.problems.targets import EncodedProblem, chat_prompt
from lens_digits.problems.tasks import Problem, operand_spans
from lens_digits.residuals.collect import ResidualSet

__all__ = ["ActivationPatching", "OperandPatching", "draw_sources", "operand_positions", "patched_greedy", "residuals_at"]


def draw_sources(
    problems: Sequence[Problem],
    prompt_lengths: Sequence[int],
    first_tokens: Sequence[int],
    seed: int = 0,
    same: Sequence[tuple[int, ...]] | None = None,
) -> list[int | None]:
    """For each problem, the index of its source (None if it has none).

    A source has the same digit scale and prompt length (and the same ``same``
    entry, when given: the operands' token positions), and another first
    answer token (so another answer, and target ``first`` can tell the two
    apart). Problems are shuffled within each (scale, length) group with the
    seed; each takes the next problem in that order that qualifies, so most
    problems are also some other problem's source.

    Returns:
        Per problem, the index in ``problems`` of its source, or None where no problem qualifies.

    >>> from lens_digits.problems.tasks import Problem
    >>> ps = [Problem(1, "add", a, 1, f"{a}+1=", str(a + 1), "test") for a in (1, 2, 3, 4)]
    >>> src = draw_sources(ps, [4, 4, 4, 4], [2, 3, 4, 4])
    >>> all(s is not None and ps[s].answer[0] != p.answer[0] for p, s in zip(ps, src))
    True
    """
    keys = same if same is not None else [()] * len(problems)
    groups: dict[tuple[int, int, tuple[int, ...]], list[int]] = defaultdict(list)
    for i, (p, n, where) in enumerate(zip(problems, prompt_lengths, keys, strict=True)):
        groups[(p.scale, n, tuple(where))].append(i)
    gen = torch.Generator().manual_seed(seed)
    out: list[int | None] = [None] * len(problems)
    for key in sorted(groups):
        idx = groups[key]
        order = [idx[k] for k in torch.randperm(len(idx), generator=gen).tolist()]
        for k, i in enumerate(order):
            for step in range(1, len(order)):
                j = order[(k + step) % len(order)]
                if first_tokens[j] != first_tokens[i]:
                    out[i] = j
                    break
    return out


def operand_positions(
    tokenizer: Any, problems: Sequence[Problem], encoded: Sequence[EncodedProblem], template: str, chat: bool = False
) -> list[tuple[int, ...]]:
    """Token positions (in the fed prompt, BOS included) whose text overlaps an operand of each problem's question.

    Found from the tokenizer's character offsets, so a token that holds a
    digit and a space or symbol besides (BPE) counts as an operand position.

    Returns:
        Per problem, the positions of the tokens that overlap its operands, ascending.

    Raises:
        LensDigitsError: The tokenizer gives no offsets (a slow tokenizer), or
            the prompts were not made with ``template`` (a prompt does not tokenize to
            its recorded tokens, or no token holds its operands).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise LensDigitsError(
            "patching at the operand positions needs a fast tokenizer (one with character offsets); load it with use_fast=True"
        )
    out = []
    for p, e in zip(problems, encoded, strict=True):
        text = chat_prompt(tokenizer, p.prompt) if chat else p.prompt
        base = text.rfind(p.prompt)
        spans = [(base + a, base + b) for a, b in operand_spans(p, template)]
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        shift = len(e.prompt_ids) - len(ids)  # a BOS put before the prompt
        if shift < 0 or list(e.prompt_ids[shift:]) != ids:
            raise LensDigitsError(f"the prompt {p.prompt!r} does not tokenize to its recorded tokens; encode it with the same tokenizer")
        positions = tuple(shift + k for k, (a, b) in enumerate(offsets) if any(a < hi and lo < b for lo, hi in spans))
        if not positions:
            raise LensDigitsError(f"no token of {p.prompt!r} holds its operands; check the template")
        out.append(positions)
    return out


class ActivationPatching(PatchingExamples, Intervention):
    """Interchange interventions at the last prompt position, one layer column at a time (method ``patch``).

    Args:
        pairs: Pairs per digit scale (the first test problems of each scale that
            have a source); None: every test problem that has one.
        seed: Seeds the choice of sources.
        batch_size: Problems per patched forward pass.
        progress: Show progress.
        template: The template the prompts were made with (a name or a format
            string); used to find the operands (:class:`OperandPatching`).
        chat: The prompts were wrapped in the tokenizer's chat template.
    """

    name = "patch"
    targets = ("first", "answer")
    uses = {"pairs": "pairs", "seed": "seed", "batch_size": "batch_size", "progress": "progress", "template": "template", "chat": "chat"}
    position: ClassVar[Literal["last", "operands"]] = "last"

    def __init__(
        self,
        pairs: int | None = None,
        seed: int = 0,
        batch_size: int = 64,
        progress: bool = False,
        template: str = "compact",
        chat: bool = False,
    ) -> None:
        """Settings only; :meth:`score` does the work.

        Raises:
            LensDigitsError: ``pairs`` is neither None nor a positive integer.
        """
        if pairs is not None and (isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1):
            raise LensDigitsError(f"pairs must be a positive integer (pairs per digit scale), got {pairs!r}")
        self.pairs, self.seed, self.batch_size, self.progress = pairs, seed, batch_size, progress
        self.template, self.chat = template, chat
        self._sources: dict[str, str] = {}  # a test problem's prompt -> its source's prompt
        self.info: dict[str, Any] = {}

    def positions(self, model: ModelAdapter, data: ResidualSet) -> list[tuple[int, ...]]:
        """The prompt positions patched in each problem: here its last one.

        Returns:
            Per problem of ``data``, a one-element tuple holding its last prompt position.
        """
        return [(len(e.prompt_ids) - 1,) for e in data.encoded]

    def sources(self, data: ResidualSet, positions: Sequence[tuple[int, ...]] | None = None) -> list[int | None]:
        """Each test problem's source index in ``data`` (None: not patched), capped at ``pairs`` per scale.

        With ``positions``, a source also has its patched positions where the problem has them.

        Returns:
            Per problem of ``data``, its source's index in ``data``, or None where it is not patched.
        """
        encoded = data.encoded
        chosen = draw_sources(
            data.problems, [len(e.prompt_ids) for e in encoded], [e.answer_ids[0] for e in encoded], self.seed, same=positions
        )
        if self.pairs is not None:
            taken: dict[int, int] = defaultdict(int)
            for i, p in enumerate(data.problems):
                if chosen[i] is not None:
                    taken[p.scale] += 1
                    if taken[p.scale] > self.pairs:
                        chosen[i] = None
        return chosen

    def source_residuals(
        self, model: ModelAdapter, data: ResidualSet, s_idx: list[int], positions: Int[Tensor, "batch k"]
    ) -> Float[Tensor, "batch layer k d_model"]:
        """The sources' residuals at the patched positions, every layer column.

        Returns:
            Per source, layer column and patched position, its residual: taken from ``data`` for the last
            position, from one forward pass over the sources' prompts otherwise.
        """
        if self.position == "last":  # collected by the sweep already
            return data.resid[torch.tensor(s_idx, dtype=torch.long, device=data.resid.device), :, :1]
        prompts = torch.tensor([list(data.encoded[j].prompt_ids) for j in s_idx], dtype=torch.long, device=model.device)
        return residuals_at(model, prompts, positions)

    def score(self, model: ModelAdapter, data: ResidualSet, target: Target) -> Scores:
        """Flip, keep and neither per test problem and layer column.

        Returns:
            Per test problem and layer column, whether the patched answer is the source's (``correct``), with
            metrics ``keep`` (still the problem's own answer) and ``neither``; ``applies`` marks the patched problems.

        Raises:
            LensDigitsError: ``target`` is not one this method reads, or ``data`` holds no residuals.
        """
        if target not in self.targets:
            raise LensDigitsError(f"activation patching reads targets {list(self.targets)}, not {target!r}")
        if not data.has_residuals:
            raise LensDigitsError("activation patching needs the test problems' residuals (the sources' activations)")
        where = self.positions(model, data)
        chosen = self.sources(data, where)
        source = {i: s for i, s in enumerate(chosen) if s is not None}  # test problem -> its source
        rows = list(source)
        n, n_cols = len(data), data.n_columns
        flip = torch.zeros(n, n_cols, dtype=torch.bool)
        keep = torch.zeros(n, n_cols, dtype=torch.bool)
        tokenizer = model.tokenizer
        outputs: dict[tuple[int, int], list[int]] = {}  # (problem, layer column) -> the patched tokens, for examples()
        # one batch holds problems of one prompt length and one set of patched positions
        kinds = sorted({(len(data.encoded[i].prompt_ids), where[i]) for i in rows})
        kind_of = {k: r for r, k in enumerate(kinds)}
        for batch in length_batches([kind_of[(len(data.encoded[i].prompt_ids), where[i])] for i in rows], self.batch_size):
            t_idx = [rows[k] for k in batch]
            s_idx = [source[i] for i in t_idx]
            prompts = torch.tensor([list(data.encoded[i].prompt_ids) for i in t_idx], dtype=torch.long, device=model.device)
            at = torch.tensor([where[i] for i in t_idx], dtype=torch.long, device=model.device)  # (B, k)
            src = self.source_residuals(model, data, s_idx, at)  # (B, layer, k, d)
            s_probs = [data.problems[j] for j in s_idx]
            t_probs = [data.problems[i] for i in t_idx]
            if target == "first":
                s_first = torch.tensor([data.encoded[j].answer_ids[0] for j in s_idx])
                t_first = torch.tensor([data.encoded[i].answer_ids[0] for i in t_idx])
            steps = 1 if target == "first" else max(len(data.encoded[i].answer_ids) for i in [*t_idx, *s_idx]) + 2
            for layer in range(n_cols):
                new = patched_greedy(model, prompts, layer, src[:, layer], steps, positions=at).cpu()  # (B, steps)
                if target == "first":
                    got_s, got_t = new[:, 0] == s_first, new[:, 0] == t_first
                else:
                    texts = [number_text(tokenizer, row) for row in new.tolist()]
                    got_s = torch.tensor([o.text == s.answer for o, s in zip(texts, s_probs, strict=True)])
                    got_t = torch.tensor([o.text == t.answer for o, t in zip(texts, t_probs, strict=True)])
                flip[t_idx, layer] = got_s
                outputs.update(((i, layer), row) for i, row in zip(t_idx, new.tolist(), strict=True))
                keep[t_idx, layer] = got_t
        applies = torch.zeros(n, dtype=torch.bool)
        applies[rows] = True
        self._sources.update({data.problems[i].prompt: data.problems[s].prompt for i, s in source.items()})
        self.info = {"pairs_patched": len(rows), "without_source": n - len(rows)}
        self._patched = (data, target, source, outputs, flip, keep, tokenizer)
        return Scores(flip, {"keep": keep.double(), "neither": (~flip & ~keep).double()}, applies=applies)

    def annotate(self, problems: Sequence[Problem]) -> list[Problem]:
        """Each patched test problem with its source's prompt (``patch_source``).

        Returns:
            ``problems`` in order, those patched by the last :meth:`score` replaced by copies with ``patch_source`` set.
        """
        import dataclasses

        return [dataclasses.replace(p, patch_source=self._sources[p.prompt]) if p.prompt in self._sources else p for p in problems]

    def settings(self) -> dict[str, Any]:
        """Pairs, seed and where the patch goes, for ``run.json``.

        Returns:
            ``pairs``, ``seed``, ``position`` and ``source``, with the counts of the last :meth:`score`
            (``pairs_patched``, ``without_source``).
        """
        position = "last prompt token" if self.position == "last" else "operand tokens of the question"
        return {"pairs": self.pairs, "seed": self.seed, "position": position, "source": "another test problem"} | self.info


class OperandPatching(ActivationPatching):
    """Interchange interventions at the operands' token positions, one layer column at a time (method ``patch_operands``).

    Takes the arguments of :class:`ActivationPatching`; ``template`` (and
    ``chat``) must be those the prompts were made with, to find the operands.
    """

    name = "patch_operands"
    position = "operands"

    def positions(self, model: ModelAdapter, data: ResidualSet) -> list[tuple[int, ...]]:
        """The token positions of each problem's operands.

        Returns:
            Per problem of ``data``, the positions of the tokens that overlap its operands (see :func:`operand_positions`).

        Raises:
            LensDigitsError: The operands cannot be found (see :func:`operand_positions`).
        """
        return operand_positions(model.tokenizer, data.problems, data.encoded, self.template, self.chat)


register_method(ActivationPatching)
register_method(OperandPatching)


@torch.inference_mode()
def residuals_at(
    model: ModelAdapter, prompts: Int[Tensor, "batch pos"], positions: Int[Tensor, "batch k"]
) -> Float[Tensor, "batch layer k d_model"]:
    """Every layer column's residual at ``positions`` of each prompt, in the model's dtype (the pass stops at the final residual).

    Returns:
        Per prompt, layer column and position, the residual, on the device of ``positions``.
    """
    names = model.resid_hook_names
    kept: list[Tensor] = []
    rows = torch.arange(prompts.shape[0], device=positions.device)[:, None]

    def grab(x: Tensor, hook: Any) -> None:
        kept.append(x[rows.to(x.device), positions.to(x.device)].to(positions.device))
        if len(kept) == len(names):
            raise _Done

    try:
        model.run_with_hooks(prompts, [(name, grab) for name in names])
    except _Done:
        pass
    return torch.stack(kept, dim=1)


class _Done(Exception):
    """Raised once the final residual is kept: nothing after it is needed."""


@torch.inference_mode()
def patched_greedy(
    model: ModelAdapter,
    prompts: Int[Tensor, "batch pos"],
    layer: int,
    source: Float[Tensor, "batch d_model"] | Float[Tensor, "batch k d_model"],
    steps: int,
    positions: Int[Tensor, "batch k"] | None = None,
) -> Int[Tensor, "batch steps"]:
    """Greedy tokens after ``prompts`` with layer column ``layer`` set to ``source`` at ``positions``.

    ``positions`` None: the last prompt position (``source`` is then one
    vector per prompt). Decoded as the model's own greedy answers are
    (:func:`lens_digits.model.kvcache.greedy_tokens`): the tokens of running the
    whole sequence each step with the patch held at its positions; where the
    model's key-value cache is used, the prompt (and so the patch) is run once.

    Returns:
        Per prompt, the ``steps`` greedy tokens generated after it.
    """
    last = torch.full((prompts.shape[0], 1), prompts.shape[1] - 1, dtype=torch.long)
    at = positions if positions is not None else last
    new = source[:, None] if source.dim() == 2 else source  # (B, k, d)
    name = model.resid_hook_names[layer]
    rows = torch.arange(prompts.shape[0])[:, None]

    def patch(x: Tensor, hook: Any) -> Tensor:
        x = x.clone()
        x[rows.to(x.device), at.to(x.device)] = new.to(x.device, x.dtype)
        return x

    return greedy_tokens(model, prompts, steps, hooks=[(name, patch)])
