"""The helix probe (method ``helix_probe``): how a number is laid out in the residual stream, read and patched per layer.

At one token per problem (``position``: the last token of operand ``a``
(default), of ``b``, or the last prompt position for the ``answer``), every
layer column's residual of the train problems of a digit scale is fitted to a
helix of the number ``n`` it holds (``a``, ``b`` or the answer), as
:mod:`lens_digits.methods.probes.helix` does: PCA to ``pca_size`` components,
least squares onto ``[n, cos(2 pi n / T), sin(2 pi n / T) for T in periods]``.

*Which token carries the reading.* Numbers span several tokens for most
tokenizers (one per digit; Llama-3 chunks of three; GPT-2 merges). The reading
is taken at the operand's *last* token, the first position where the whole
number can have been seen (attention looks only backwards); for a number in one
token that is the token itself. A BPE token that also holds a space or a symbol
counts if it overlaps the operand.

Scores on the test problems, per layer column:

- ``accuracy``: the share of problems whose number, decoded from the fit (the
  candidate in range whose fitted point is nearest), is right; ``r2`` the held-out
  R² in the PCA space; ``control`` and ``control_r2`` the same for a fit on
  train numbers shuffled across problems (seeded), which should read nothing.
- ``patched`` rows, the causal score. Test problems are paired as ``patch``
  pairs them (a source of the same scale and prompt length, with the number at
  the same position, and another first answer token; seeded). The target's
  residual at the position is replaced by: the source's own (``full layer``),
  the helix fit's reconstruction of the source's number (``helix``), the
  source's residual projected onto as many top principal components as the helix
  has basis functions (``pca``), the fit of a ``circle`` (no linear term) and of
  a ``polynomial`` ``[n, n^2, ...]`` of the helix's dimension. Each row's
  accuracy is its flip rate (the next token is the source's first answer token);
  ``logit_diff`` the mean change of ``logit(source's first token) -
  logit(target's)`` against the unpatched run; ``recovered`` that change as a
  share of the full-layer patch's mean change over the scale (NaN where the full
  patch changes nothing, as at column 0 of the ``answer`` position).

The causal score reads the first answer token, so targets ``first`` and
``answer`` get the same rows. Validation problems are not read: the fit has
nothing to choose.
"""

import string
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens_digits.errors import LensDigitsError
from lens_digits.methods.base import Intervention, register_method
from lens_digits.methods.interventions.patching import draw_sources, residuals_at
from lens_digits.methods.probes.helix import DEFAULT_PERIODS, PCA_SIZE, NumberFit, check_periods, fit_number
from lens_digits.methods.scores import Scores, Target
from lens_digits.model.adapter import ModelAdapter
from lens_digits.model.batching import length_batches
from lens_digits.problems.operations import operand_range
from lens_digits.problems.targets import EncodedProblem, chat_prompt
from lens_digits.problems.tasks import Problem, operand_spans, resolve_template
from lens_digits.residuals.collect import ResidualSet

__all__ = ["PATCHES", "POSITIONS", "HelixProbe", "number_positions", "patched_last_logits"]

POSITIONS = ("a", "b", "answer")
"""Where the helix is read: the last token of operand ``a``, of ``b``, or the last prompt position (the answer)."""

PATCHES = ("full layer", "helix", "pca", "circle", "polynomial")
"""The interventions of the causal score, in the order of its rows."""


def number_positions(
    tokenizer: Any,
    problems: Sequence[Problem],
    encoded: Sequence[EncodedProblem],
    which: Literal["a", "b", "answer"],
    template: str = "compact",
    chat: bool = False,
) -> list[int]:
    """The position (in the fed prompt, BOS included) of the token that carries each problem's number.

    ``answer``: the last prompt position. ``a`` or ``b``: the last token whose
    text overlaps that operand in the problem's question (few-shot examples
    excluded), found from the tokenizer's character offsets.

    Returns:
        One position per problem.

    Raises:
        LensDigitsError: ``which`` is unknown, the tokenizer gives no offsets, the template has no such operand, or a
            prompt does not tokenize to its recorded tokens.
    """
    if which == "answer":
        return [len(e.prompt_ids) - 1 for e in encoded]
    if which not in POSITIONS:
        raise LensDigitsError(f"position must be one of {list(POSITIONS)}, got {which!r}")
    if not getattr(tokenizer, "is_fast", False):
        raise LensDigitsError(
            "reading at an operand's token needs a fast tokenizer (one with character offsets); load it with use_fast=True"
        )
    fields = [f for _, f, _, _ in string.Formatter().parse(resolve_template(template)) if f in ("a", "b")]
    if which not in fields:
        raise LensDigitsError(f"template {template!r} has no operand {which!r}; use position 'answer' or another template")
    out = []
    for p, e in zip(problems, encoded, strict=True):
        text = chat_prompt(tokenizer, p.prompt) if chat else p.prompt
        base = text.rfind(p.prompt)
        lo, hi = [(base + s, base + t) for f, (s, t) in zip(fields, operand_spans(p, template), strict=True) if f == which][-1]
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        shift = len(e.prompt_ids) - len(ids)  # a BOS put before the prompt
        if shift < 0 or list(e.prompt_ids[shift:]) != ids:
            raise LensDigitsError(f"the prompt {p.prompt!r} does not tokenize to its recorded tokens; encode it with the same tokenizer")
        hits = [k for k, (a, b) in enumerate(offsets) if a < hi and lo < b]
        if not hits:
            raise LensDigitsError(f"no token of {p.prompt!r} holds its operand {which!r}; check the template")
        out.append(shift + hits[-1])
    return out


@torch.inference_mode()
def patched_last_logits(
    model: ModelAdapter,
    prompts: Int[Tensor, "batch pos"],
    layer: int,
    new: Float[Tensor, "batch d_model"],
    positions: Int[Tensor, " batch"],
) -> Float[Tensor, "batch d_vocab"]:
    """The model's logits at the last position with layer column ``layer`` set to ``new`` at ``positions``.

    Returns:
        The next-token logits of each prompt, in float32 on the CPU.
    """
    rows = torch.arange(prompts.shape[0])

    def patch(x: Tensor, hook: Any) -> Tensor:
        x = x.clone()
        x[rows.to(x.device), positions.to(x.device)] = new.to(x.device, x.dtype)
        return x

    return model.last_logits(prompts, hooks=[(model.resid_hook_names[layer], patch)]).float().cpu()


@register_method
class HelixProbe(Intervention):
    """Helix fits of a number's residuals per digit scale and layer column, scored and patched (see the module docstring).

    Args:
        position: ``a`` (default), ``b`` or ``answer``: whose number is read, at which token.
        periods: The helix's periods (any positive numbers; default 2, 5, 10, 100).
        pca_size: Principal components fitted in (fewer where ``d_model`` or the train problems are fewer).
        causal: Also patch the fits into the model (the ``patched`` rows).
        pairs: Patched pairs per digit scale (None: every test problem with a source).
        seed: Seeds the pairs and the control's shuffle.
        batch_size: Prompts per forward pass.
        template: The template the prompts were made with (to find the operands).
        chat: The prompts were wrapped in the tokenizer's chat template.
        progress: Accepted for a uniform interface.
    """

    name = "helix_probe"
    targets = ("first", "answer")
    accuracy_means = "accuracy"  # its main cells are decoding accuracies; only the patched rows are flip rates
    uses = {"pairs": "pairs", "seed": "seed", "batch_size": "batch_size", "template": "template", "chat": "chat", "progress": "progress"}

    def __init__(
        self,
        position: str = "a",
        periods: Sequence[float | int] | str = DEFAULT_PERIODS,
        pca_size: int = PCA_SIZE,
        causal: bool = True,
        pairs: int | None = None,
        seed: int = 0,
        batch_size: int = 64,
        template: str = "compact",
        chat: bool = False,
        progress: bool = False,
    ) -> None:
        """Settings only; :meth:`prepare` fits and :meth:`score` scores.

        Raises:
            LensDigitsError: ``position``, ``periods``, ``pca_size`` or ``pairs`` is out of range.
        """
        if position not in POSITIONS:
            raise LensDigitsError(f"position must be one of {list(POSITIONS)}, got {position!r}")
        if isinstance(pca_size, bool) or not isinstance(pca_size, int) or pca_size < 1:
            raise LensDigitsError(f"pca_size must be a positive integer, got {pca_size!r}")
        if pairs is not None and (isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1):
            raise LensDigitsError(f"pairs must be a positive integer (pairs per digit scale), got {pairs!r}")
        self.position: Literal["a", "b", "answer"] = position  # type: ignore[assignment]
        self.periods = check_periods(periods)
        self.pca_size, self.causal, self.pairs, self.seed = pca_size, bool(causal), pairs, int(seed)
        self.batch_size, self.template, self.chat = int(batch_size), template, bool(chat)
        self.fits: dict[tuple[int, int], dict[str, NumberFit]] = {}
        self.candidates: dict[int, Tensor] = {}
        self.info: dict[str, Any] = {}
        self._last: tuple[ResidualSet, Scores] | None = None
        self.test_residuals: Tensor | None = None
        """The last scored problems' residuals at the reading position, (problem, layer column, d_model)."""
        self.test_numbers: Tensor | None = None

    # ---- the number and its residuals ------------------------------------------------------------

    def numbers(self, problems: Sequence[Problem]) -> Tensor:
        """The number each problem's reading is about: its ``a``, its ``b`` or its answer.

        Returns:
            One integer per problem.
        """
        if self.position == "answer":
            return torch.tensor([int(p.answer) for p in problems], dtype=torch.long)
        return torch.tensor([getattr(p, self.position) for p in problems], dtype=torch.long)

    def residuals(self, model: ModelAdapter, data: ResidualSet) -> tuple[Float[Tensor, "problem layer d_model"], list[int]]:
        """Every layer column's residual at each problem's reading position (one forward pass per batch of equal length).

        Returns:
            The residuals (float32, on the CPU) and the positions.
        """
        where = number_positions(model.tokenizer, data.problems, data.encoded, self.position, self.template, self.chat)
        out = torch.zeros(len(data), model.n_layers + 1, model.d_model)
        for rows in length_batches([len(e.prompt_ids) for e in data.encoded], self.batch_size):
            prompts = torch.tensor([list(data.encoded[i].prompt_ids) for i in rows], dtype=torch.long, device=model.device)
            at = torch.tensor([[where[i]] for i in rows], dtype=torch.long, device=model.device)
            out[rows] = residuals_at(model, prompts, at)[:, :, 0].float().cpu()
        return out, where

    # ---- fit -------------------------------------------------------------------------------------

    def prepare(self, model: ModelAdapter, train: ResidualSet, val: ResidualSet) -> None:
        """Fit the helix, its control, the circle and the polynomial per digit scale and layer column on the train problems.

        Raises:
            LensDigitsError: A digit scale has fewer than two train problems.
        """
        resid, _ = self.residuals(model, train)
        n = self.numbers(train.problems)
        gen = torch.Generator().manual_seed(self.seed)
        self.fits, self.candidates, used = {}, {}, {}
        for scale in sorted({p.scale for p in train.problems}):
            rows = torch.tensor([i for i, p in enumerate(train.problems) if p.scale == scale])
            if len(rows) < 2:
                raise LensDigitsError(f"the helix probe needs at least two train problems at digit scale {scale}; use more (--n)")
            ns = n[rows]
            shuffled = ns[torch.randperm(len(ns), generator=gen)]
            lo, hi = operand_range(scale) if self.position != "answer" else (int(ns.min()), int(ns.max()))
            self.candidates[scale] = torch.arange(lo, hi + 1)
            top = float(max(abs(lo), abs(hi), 1))
            for layer in range(resid.shape[1]):
                x = resid[rows, layer]
                fits = {kind: fit_number(x, ns, self.periods, kind, self.pca_size, top) for kind in ("helix", "circle", "polynomial")}  # type: ignore[arg-type]
                fits["control"] = fit_number(x, shuffled, self.periods, "helix", self.pca_size, top)
                self.fits[(scale, layer)] = fits
            used[str(scale)] = int(fits["helix"].components.shape[1])
        self.info = {"pca_size_used": used, "n_train": {str(s): sum(p.scale == s for p in train.problems) for s in self.candidates}}

    def fit_of(self, scale: int, layer: int, kind: str = "helix") -> NumberFit:
        """The fit of ``kind`` (``helix``, ``circle``, ``polynomial``, ``control``) at a digit scale and layer column.

        Returns:
            The fit.

        Raises:
            LensDigitsError: Not fitted for that scale (call :meth:`prepare` with train problems of it).
        """
        if (scale, layer) not in self.fits:
            raise LensDigitsError(f"the helix probe has no fit for digit scale {scale}; fit it on train problems of that scale")
        return self.fits[(scale, layer)][kind]

    # ---- score -----------------------------------------------------------------------------------

    def score(self, model: ModelAdapter, data: ResidualSet, target: Target) -> Scores:
        """Decoding accuracy, R² and the control per test problem and layer column; with ``causal``, the ``patched`` rows.

        Returns:
            The scores (the same for targets ``first`` and ``answer``).

        Raises:
            LensDigitsError: ``target`` is not one it reads, or a scale was not fitted.
        """
        if target not in self.targets:
            raise LensDigitsError(f"the helix probe reads targets {list(self.targets)}, not {target!r}")
        if self._last is not None and self._last[0] is data:
            return self._last[1]
        resid, where = self.residuals(model, data)
        n = self.numbers(data.problems)
        n_cols = resid.shape[1]
        correct = torch.zeros(len(data), n_cols, dtype=torch.bool)
        metrics = {k: torch.zeros(len(data), n_cols, dtype=torch.float64) for k in ("r2", "control", "control_r2")}
        for scale in sorted({p.scale for p in data.problems}):
            rows = torch.tensor([i for i, p in enumerate(data.problems) if p.scale == scale])
            for layer in range(n_cols):
                x, ns = resid[rows, layer], n[rows]
                helix, control = self.fit_of(scale, layer), self.fit_of(scale, layer, "control")
                correct[rows, layer] = helix.decode(x, self.candidates[scale]) == ns
                metrics["r2"][rows, layer] = helix.r2(x, ns)
                metrics["control"][rows, layer] = (control.decode(x, self.candidates[scale]) == ns).double()
                metrics["control_r2"][rows, layer] = control.r2(x, ns)
        scores = Scores(correct, metrics)
        if self.causal:
            scores.breakdown["patched"] = self.causal_scores(model, data, resid, where, n)
        self._last = (data, scores)
        self.test_residuals, self.test_numbers = resid, n
        return scores

    def reconstruct(self, kind: str, scale: int, layer: int, number: Tensor, resid: Float[Tensor, "problem d_model"]) -> Tensor:
        """What the patch of ``kind`` puts in place of the target's residual, for sources of one scale.

        ``full layer``: the sources' residuals; ``pca``: those projected onto the
        helix's number of top principal components; ``helix``, ``circle``,
        ``polynomial``: the fit's reconstruction of the sources' numbers.

        Returns:
            One residual per source (float64).
        """
        if kind == "full layer":
            return resid.double()
        fit = self.fit_of(scale, layer)
        if kind == "pca":
            basis = fit.components[:, : fit.coef.shape[0]]
            return fit.mean + ((resid.double() - fit.mean) @ basis) @ basis.T
        return self.fit_of(scale, layer, kind).reconstruct(number)

    def causal_scores(
        self, model: ModelAdapter, data: ResidualSet, resid: Float[Tensor, "problem layer d_model"], where: list[int], n: Tensor
    ) -> dict[str, Scores]:
        """Flip rate, logit-difference change and share of the full-layer patch's change recovered, per patch of :data:`PATCHES`.

        Returns:
            Scores by patch name, applying to the patched test problems.
        """
        first = [e.answer_ids[0] for e in data.encoded]
        chosen = draw_sources(data.problems, [len(e.prompt_ids) for e in data.encoded], first, self.seed, same=[(w,) for w in where])
        taken: dict[int, int] = defaultdict(int)
        for i, p in enumerate(data.problems):
            if chosen[i] is not None:
                taken[p.scale] += 1
                if self.pairs is not None and taken[p.scale] > self.pairs:
                    chosen[i] = None
        rows = [i for i, s in enumerate(chosen) if s is not None]
        n_all, n_cols = len(data), resid.shape[1]
        flip = {k: torch.zeros(n_all, n_cols, dtype=torch.bool) for k in PATCHES}
        change = {k: torch.zeros(n_all, n_cols, dtype=torch.float64) for k in PATCHES}
        kinds = sorted({(len(data.encoded[i].prompt_ids), where[i]) for i in rows})
        for batch in length_batches([kinds.index((len(data.encoded[i].prompt_ids), where[i])) for i in rows], self.batch_size):
            t_idx = [rows[k] for k in batch]
            s_idx = [chosen[i] for i in t_idx]
            prompts = torch.tensor([list(data.encoded[i].prompt_ids) for i in t_idx], dtype=torch.long, device=model.device)
            at = torch.tensor([where[i] for i in t_idx], dtype=torch.long)
            s_tok, t_tok = torch.tensor([first[j] for j in s_idx]), torch.tensor([first[i] for i in t_idx])  # type: ignore[index]
            b = torch.arange(len(t_idx))
            clean = model.last_logits(prompts).float().cpu()
            clean_diff = (clean[b, s_tok] - clean[b, t_tok]).double()
            scales = torch.tensor([data.problems[i].scale for i in t_idx])
            for layer in range(n_cols):
                for kind in PATCHES:
                    new = torch.zeros(len(t_idx), resid.shape[-1], dtype=torch.float64)
                    for scale in scales.unique().tolist():
                        sel = (scales == scale).nonzero()[:, 0]
                        src = torch.tensor([s_idx[k] for k in sel.tolist()], dtype=torch.long)
                        new[sel] = self.reconstruct(kind, scale, layer, n[src], resid[src, layer])
                    logits = patched_last_logits(model, prompts, layer, new, at)
                    flip[kind][t_idx, layer] = logits.argmax(-1) == s_tok
                    change[kind][t_idx, layer] = (logits[b, s_tok] - logits[b, t_tok]).double() - clean_diff
        applies = torch.zeros(n_all, dtype=torch.bool)
        applies[rows] = True
        full = torch.full((n_all, n_cols), float("nan"), dtype=torch.float64)  # each scale's mean full-layer change
        for scale in sorted({data.problems[i].scale for i in rows}):
            sel = torch.tensor([i for i in rows if data.problems[i].scale == scale])
            mean = change["full layer"][sel].mean(0)
            full[sel] = torch.where(mean.abs() > 1e-6, mean, torch.tensor(float("nan"), dtype=torch.float64))
        self.info |= {"pairs_patched": len(rows), "without_source": n_all - len(rows)}
        return {
            k: Scores(
                flip[k], {"logit_diff": change[k], "recovered": torch.where(applies[:, None], change[k] / full, 0.0)}, applies=applies
            )
            for k in PATCHES
        }

    def settings(self) -> dict[str, Any]:
        """Position, periods, PCA size, pairs and seed, for ``run.json``, with what the last fit and score used.

        Returns:
            The settings, JSON-ready.
        """
        token = "last prompt position" if self.position == "answer" else f"last token of operand {self.position}"
        return {
            "position": self.position,
            "token": token,
            "periods": list(self.periods),
            "pca_size": self.pca_size,
            "bases": ["helix", "circle", "polynomial", "pca"],
            "causal": self.causal,
            "pairs": self.pairs,
            "seed": self.seed,
            "control": "the helix fitted to train numbers shuffled across problems (seeded)",
        } | self.info
