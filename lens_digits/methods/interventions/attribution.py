"""Attribution patching (methods ``attribution`` and ``attribution_operands``): a first-order estimate of each patch's effect.

For the same seeded (source, target) pairs as the exact interventions ``patch``
and ``patch_operands`` (:mod:`lens_digits.methods.interventions.patching`), the
effect of patching layer column ``l`` of the target's run with the source's
residual, on the logit difference ``logit(source's first answer token) -
logit(target's first answer token)`` at the last prompt position, is estimated
to first order: ``(h_source - h_target) . d(logit difference)/d(h_target)``,
summed over the patched positions (the last prompt token, the ``=``, for
``attribution``; the operands' tokens for ``attribution_operands``). One
forward and one backward pass of the target's prompt give every column's
estimate at once, where exact patching runs the model once per column.

The gradients and activations come from TransformerLens'
``attribution_patching.cache_activation_and_gradient`` (its clean/corrupt
convention: the source is "clean", the target "corrupt", and the gradient is
taken on the target's run). Its ``attribution_patch`` itself scores the
components that write into the residual stream (embeddings, heads, MLPs), not
a residual column at chosen positions, and averages over pairs, so the grid's
per-pair, per-column estimate is formed here from that gradient cache.

With ``exact`` (the default) each pair is also patched exactly, one column at a
time, and the estimate is scored against it. Per cell: ``estimate`` and
``exact`` (means), ``abs_error``, and accuracy = the share of pairs where the
estimate has the exact effect's sign; ``spearman`` is each digit scale's
Spearman rank correlation between estimate and exact effect over every
(pair, column) of the scale (also in ``run.json``). Without ``exact``, accuracy
is the share of pairs whose estimate is positive (the patch is estimated to move
the answer toward the source's). It needs a TransformerLens with ``tools.analysis`` (3.9 and 4.3 have it).
"""

from collections import defaultdict
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import Tensor

from lens_digits.errors import LensDigitsError, NonFiniteError
from lens_digits.methods.base import register_method
from lens_digits.methods.interventions.patching import ActivationPatching, OperandPatching
from lens_digits.methods.scores import Scores, Target
from lens_digits.model.adapter import ModelAdapter
from lens_digits.model.batching import length_batches
from lens_digits.model.loading import analysis_tools
from lens_digits.residuals.collect import ResidualSet

__all__ = ["AttributionPatching", "OperandAttributionPatching", "spearman"]


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rank correlation of two sets of numbers (ties get their mean rank).

    Returns:
        The correlation; NaN where either set is constant or has fewer than two numbers.

    >>> spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 25.0]))
    1.0
    """
    if x.numel() < 2:
        return float("nan")
    a = pd.Series(x.flatten().double().numpy()).rank()
    b = pd.Series(y.flatten().double().numpy()).rank()
    return float(a.corr(b))


@register_method
class AttributionPatching(ActivationPatching):
    """Attribution patching at the last prompt position, every layer column from one backward pass (method ``attribution``).

    Takes the arguments of :class:`~lens_digits.methods.interventions.patching.ActivationPatching`
    (the same ``pairs`` and ``seed`` give the same pairs), and ``exact``: also patch
    each pair exactly (one forward per column), to score the estimate against.
    """

    name = "attribution"
    accuracy_means = "sign agreement"
    signed_metrics = ("estimate", "exact")
    targets: ClassVar[tuple[str, ...]] = ("first",)  # type: ignore[assignment]  # patch reads "answer" too

    def __init__(self, *args: Any, exact: bool = True, **kwargs: Any) -> None:
        """Settings only; :meth:`score` does the work.

        Raises:
            TransformerLensVersionError: The installed TransformerLens has no ``tools.analysis`` (before 3.9).
            LensDigitsError: ``pairs`` is neither None nor a positive integer.
        """
        analysis_tools(self.name)
        super().__init__(*args, **kwargs)
        self.exact = bool(exact)
        self.correlation: dict[str, float] = {}
        self.passes: dict[str, int] = {}

    def score(self, model: ModelAdapter, data: ResidualSet, target: Target) -> Scores:
        """Estimated (and exact) effect of patching each layer column on the logit difference, per pair.

        Returns:
            Per test problem (the target of a pair) and layer column: whether the estimate has the exact effect's sign
            (without ``exact``: whether it is positive), with metrics ``estimate`` (``exact``, ``abs_error``, ``spearman``);
            ``applies`` marks the problems with a source.

        Raises:
            LensDigitsError: ``target`` is not ``first``, or ``data`` holds no residuals.
            NonFiniteError: A gradient or logit difference is not finite.
        """
        if target not in self.targets:
            raise LensDigitsError(f"attribution patching reads target 'first' (the first answer token's logit difference), not {target!r}")
        if not data.has_residuals:
            raise LensDigitsError("attribution patching needs the test problems' residuals (the sources' activations)")
        tools = analysis_tools(self.name)
        cache_grad = tools.attribution_patching.cache_activation_and_gradient
        where = self.positions(model, data)
        chosen = self.sources(data, where)
        source = {i: s for i, s in enumerate(chosen) if s is not None}
        rows = list(source)
        n, n_cols = len(data), data.n_columns
        estimate = torch.zeros(n, n_cols, dtype=torch.float64)
        exact = torch.zeros(n, n_cols, dtype=torch.float64)
        names = model.resid_hook_names
        passes: defaultdict[str, int] = defaultdict(int)
        kinds = sorted({(len(data.encoded[i].prompt_ids), where[i]) for i in rows})
        kind_of = {k: r for r, k in enumerate(kinds)}
        for batch in length_batches([kind_of[(len(data.encoded[i].prompt_ids), where[i])] for i in rows], self.batch_size):
            t_idx = [rows[k] for k in batch]
            s_idx = [source[i] for i in t_idx]
            prompts = torch.tensor([list(data.encoded[i].prompt_ids) for i in t_idx], dtype=torch.long, device=model.device)
            at = torch.tensor([where[i] for i in t_idx], dtype=torch.long, device=model.device)  # (B, k)
            src = self.source_residuals(model, data, s_idx, at).float()  # (B, layer, k, d)
            passes["forward"] += len(t_idx) if self.position != "last" else 0  # the sources' pass at the operands
            s_gold = torch.tensor([data.encoded[j].answer_ids[0] for j in s_idx], device=model.device)
            t_gold = torch.tensor([data.encoded[i].answer_ids[0] for i in t_idx], device=model.device)
            b = torch.arange(len(t_idx), device=model.device)

            def metric(logits: Tensor, s_gold: Tensor = s_gold, t_gold: Tensor = t_gold, b: Tensor = b) -> Tensor:
                last = logits[:, -1].float()
                return (last[b, s_gold] - last[b, t_gold]).sum()  # the rows' sum: each row's gradient is its own

            with torch.inference_mode(False), torch.enable_grad():
                found = cache_grad(model.model, prompts.clone(), metric, names_filter=lambda name: name in names)
            passes["forward"] += len(t_idx)
            passes["backward"] += len(t_idx)
            rows_b = b[:, None]
            for col, name in enumerate(names):
                act = found.activations[name][rows_b, at].float()  # (B, k, d)
                grad = found.gradients.get(name)
                if grad is None:
                    raise LensDigitsError(f"attribution patching got no gradient at {name}; the model's hooks do not reach it")
                g = grad[rows_b, at].float()
                estimate[t_idx, col] = ((src[:, col].to(act.device) - act) * g).sum((-1, -2)).double().cpu()
            if self.exact:
                base = self._logit_diff(model, prompts, [], s_gold, t_gold)
                for col, name in enumerate(names):
                    hook = _patch_hook(at, src[:, col])
                    exact[t_idx, col] = (self._logit_diff(model, prompts, [(name, hook)], s_gold, t_gold) - base).double().cpu()
                passes["exact forward"] += len(t_idx) * (n_cols + 1)
        for name, values in (("estimate", estimate), ("exact", exact)):
            if not bool(torch.isfinite(values).all()):
                raise NonFiniteError(f"attribution patching: the {name} effect is not finite (NaN or infinite); check the model's weights")
        applies = torch.zeros(n, dtype=torch.bool)
        applies[rows] = True
        self._sources.update({data.problems[i].prompt: data.problems[s].prompt for i, s in source.items()})
        self.passes = {k: v // max(1, len(rows)) for k, v in passes.items()} | {"pairs": len(rows)}
        metrics = {"estimate": estimate}
        if self.exact:
            scales = torch.tensor([p.scale for p in data.problems])
            rho = torch.full((n, n_cols), float("nan"), dtype=torch.float64)
            self.correlation = {}
            for scale in sorted(set(scales[applies].tolist())):
                sel = applies & (scales == scale)
                self.correlation[str(scale)] = r = spearman(estimate[sel], exact[sel])
                rho[sel] = r
            metrics |= {"exact": exact, "abs_error": (estimate - exact).abs(), "spearman": rho}
            correct = (estimate > 0) == (exact > 0)
        else:
            correct = estimate > 0
        self.info = {"pairs_patched": len(rows), "without_source": n - len(rows)}
        return Scores(correct, metrics, applies=applies)

    @staticmethod
    @torch.inference_mode()
    def _logit_diff(model: ModelAdapter, prompts: Tensor, hooks: list[tuple[str, Any]], s_gold: Tensor, t_gold: Tensor) -> Tensor:
        """The logit difference (source's gold minus target's gold) at the last prompt position, with ``hooks``.

        Returns:
            Per prompt, the difference (float32).
        """
        last = model.last_logits(prompts, hooks).float()
        b = torch.arange(len(prompts), device=last.device)
        return last[b, s_gold.to(last.device)] - last[b, t_gold.to(last.device)]

    def settings(self) -> dict[str, Any]:
        """The pairs' settings (as ``patch``'s), ``exact``, each scale's Spearman correlation and the passes per pair.

        Returns:
            :meth:`ActivationPatching.settings`, then ``estimate``, ``exact``, ``spearman`` (by scale) and ``passes_per_pair``.
        """
        out = super().settings() | {"estimate": "first order: (source - target) . gradient on the target's run", "exact": self.exact}
        return out | {"spearman": dict(self.correlation), "passes_per_pair": dict(self.passes)}


def _patch_hook(at: Tensor, new: Tensor) -> Any:
    """A forward hook setting positions ``at`` of each row to ``new`` (one vector per row and position).

    Returns:
        The hook.
    """
    rows = torch.arange(at.shape[0])[:, None]

    def patch(x: Tensor, hook: Any) -> Tensor:
        x = x.clone()
        x[rows.to(x.device), at.to(x.device)] = new.to(x.device, x.dtype)
        return x

    return patch


@register_method
class OperandAttributionPatching(AttributionPatching):
    """Attribution patching at the operands' token positions (method ``attribution_operands``; pairs as ``patch_operands``).

    Takes the arguments of :class:`AttributionPatching`; ``template`` (and
    ``chat``) must be those the prompts were made with, to find the operands.
    """

    name = "attribution_operands"
    position = "operands"
    positions = OperandPatching.positions
