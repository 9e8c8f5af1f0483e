"""Direct logit attribution per component (method ``dla``): which layer's attention or MLP writes the answer's digit.

For each test problem and answer position, the final residual is the sum of
what each component wrote: the embeddings, then each block's attention and MLP
outputs (TransformerLens' ``ActivationCache.decompose_resid``). With the final
norm's scale frozen at its value on the clean run, the readout is linear in
that sum, so each component's *direct* contribution to a logit difference is
its normalised output dotted with the unembedding direction of the difference;
the contributions plus the bias terms (the final norm's bias and the
unembedding's) add up to the model's logit difference.

The logit difference is the gold digit's logit minus the mean logit of the
other digits: the tokens of the same form (the same text with other digits:
``7`` against ``0``-``9``, ``" 12"`` against the other two-digit tokens after a
space), so the constant every logit shares cancels. A gold token without digits
(a minus sign) is read alone: its own logit.

Rows of the grid: at layer column ``0`` the embeddings' contribution, at column
``l + 1`` block ``l``'s (the column where its output first is in the residual
stream). Breakdown column ``component``: ``embed``, ``attn``, ``mlp`` (a
component writes at its own column only: elsewhere its contribution is 0); the
main rows are their sum. Accuracy is the share of problems where the
contribution is positive (the component pushes toward the gold digit); metric
``contribution`` its mean, ``logit_diff`` the model's logit difference (before
any output soft-cap, which is not linear) and ``bias`` the bias terms. Target
``answer`` reads every answer position (teacher-forced) and adds ``place`` rows
(``units``, ...); ``first`` reads the first answer token at the last prompt position.

Why not ``transformer_lens.tools.analysis.direct_logit_attribution`` itself: it
requires a bridge in compatibility mode with the final norm folded into the
unembedding, which changes the residual basis that every other reading of this
package (and TransformerLens' Jacobian lens) reads raw; so this module uses the
decomposition that function wraps (``decompose_resid``) and applies the final
norm's frozen scale and weights itself, checked against the norm's own output.
It needs a TransformerLens with ``tools.analysis`` (3.9 and 4.3 have it), as the other wrapped tools do.
"""

import re
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens_digits.errors import LensDigitsError, NonFiniteError
from lens_digits.methods.base import Intervention, register_method
from lens_digits.methods.lenses.numbers import place_positions
from lens_digits.methods.scores import Scores, Target
from lens_digits.model.adapter import ModelAdapter
from lens_digits.model.batching import length_batches
from lens_digits.model.loading import analysis_tools
from lens_digits.model.readout import Readout
from lens_digits.residuals.collect import ResidualSet

__all__ = ["COMPONENTS", "DirectLogitAttribution", "Rivals", "direct_contributions"]

COMPONENTS = ("embed", "attn", "mlp")
"""The ``component`` labels of the rows: the embeddings, a block's attention output, its MLP output."""

_DIGIT = re.compile(r"\d")


class Rivals:
    """The tokens a gold token is compared with: those of the same form (same text, other digits), found once per vocabulary."""

    def __init__(self, tokenizer: Any, d_vocab: int) -> None:
        """Index the vocabulary's token texts by form (each digit read as ``0``)."""
        self.forms: dict[str, list[int]] = {}
        for i in range(d_vocab):
            text = tokenizer.decode([i]) if i < len(tokenizer) else ""
            if _DIGIT.search(text):
                self.forms.setdefault(_DIGIT.sub("0", text), []).append(i)
        self.text_of: Callable[[int], str] = lambda i: tokenizer.decode([i])

    def of(self, gold: int) -> list[int]:
        """The rivals of token ``gold``.

        Returns:
            The other tokens of its form (empty for a token without digits).
        """
        text = self.text_of(gold)
        if not _DIGIT.search(text):
            return []
        return [i for i in self.forms.get(_DIGIT.sub("0", text), []) if i != gold]


def _frozen_norm(cache: Any, final: Tensor, ln_final: Any) -> tuple[bool, Tensor, Tensor | None]:
    """The final norm as the clean run applied it: whether it centres, its effective weight and its bias.

    Found from the norm's own hooks (``hook_scale``, ``hook_normalized``), its output and its parameters, and checked
    against them, so a norm of another form is refused rather than mis-read.

    Returns:
        ``(centres, weight, bias)``.

    Raises:
        LensDigitsError: The final norm is not ``(x - mean?) / scale * weight + bias`` (with weight or 1 + weight).
    """
    scale, normed, out = cache["ln_final.hook_scale"], cache["ln_final.hook_normalized"], cache["ln_final.hook_out"]
    params = dict(ln_final.named_parameters())
    w = next((p for n, p in params.items() if n.endswith("weight")), None)
    b = next((p for n, p in params.items() if n.endswith("bias")), None)
    tol = dict(rtol=1e-3, atol=1e-4 * float(normed.abs().max()) + 1e-6)
    centres = not torch.allclose(final / scale, normed.float(), **tol)  # type: ignore[arg-type]
    if centres and not torch.allclose((final - final.mean(-1, keepdim=True)) / scale, normed.float(), **tol):  # type: ignore[arg-type]
        raise LensDigitsError("dla: the final norm is neither a LayerNorm nor an RMSNorm of its input; this model is not supported")
    tol = dict(rtol=1e-3, atol=1e-4 * float(out.abs().max()) + 1e-6)
    for weight in [w.float(), 1 + w.float()] if w is not None else [torch.ones(final.shape[-1])]:
        if torch.allclose(normed.float() * weight + (b.float() if b is not None else 0), out.float(), **tol):  # type: ignore[arg-type]
            return centres, weight, None if b is None else b.float()
    raise LensDigitsError("dla: the final norm's output is not its normalised input times a weight plus a bias; this model is unsupported")


@torch.inference_mode()
def direct_contributions(
    model: ModelAdapter,
    tokens: Int[Tensor, "batch seq"],
    positions: Int[Tensor, "batch pos"],
    gold: Int[Tensor, "batch pos"],
    rivals: Rivals,
) -> tuple[Float[Tensor, "component batch pos"], list[tuple[str, int]], Float[Tensor, "batch pos"], Float[Tensor, "batch pos"]]:
    """Each component's direct contribution to gold-minus-rivals at ``positions`` (``gold`` -1: padding, read as 0).

    Returns:
        ``(contribution, where, bias, total)``: per component (``where`` gives its label in :data:`COMPONENTS` and its
        layer column), the contribution; the bias terms; and the logit difference before any output transform.
        ``contribution.sum(0) + bias == total`` up to float error.

    Raises:
        LensDigitsError: The unembedding is not a matrix, or the final norm is not of a supported form.
        NonFiniteError: A contribution or the logit difference is NaN or infinite.
    """
    tl_model: Any = model.model  # a TransformerBridge: run_with_cache and its ActivationCache
    final_name = model.resid_hook_names[-1]
    logits, cache = tl_model.run_with_cache(tokens, names_filter=lambda n: n == final_name or _kept(n))
    stack, labels = cache.decompose_resid(apply_ln=False, pos_slice=None, return_labels=True)  # (C, B, T, d)
    rows = torch.arange(tokens.shape[0], device=stack.device)[:, None]
    at = positions.to(stack.device)
    stack = stack[:, rows, at].float()  # (C, B, P, d)
    final_at = cache[final_name][rows, at]
    final = final_at.float()
    sub = {k: cache[k][rows, at].float() for k in ("ln_final.hook_scale", "ln_final.hook_normalized")}
    sub["ln_final.hook_out"] = tl_model.ln_final(final_at).float()  # the norm's output (a HookedTransformer has no hook for it)
    centres, weight, bias = _frozen_norm(sub, final, tl_model.ln_final)
    unembed = Readout(model)._tiles()
    if unembed is None:
        raise LensDigitsError("dla reads the unembedding as a matrix (W_U); this model's unembedding is not one")
    W_U, b_U = unembed[0].float(), None if unembed[1] is None else unembed[1].float()
    directions, offsets = {}, {}
    for g in torch.unique(gold).tolist():
        if g < 0:
            continue
        r = rivals.of(int(g))
        directions[g] = W_U[:, g] - (W_U[:, r].mean(1) if r else 0)
        offsets[g] = 0.0 if b_U is None else float(b_U[g] - (b_U[r].mean() if r else 0))
    d = torch.stack([directions.get(g, torch.zeros_like(W_U[:, 0])) for g in gold.flatten().tolist()]).view(*gold.shape, -1)
    d = d.to(stack.device)
    off = torch.tensor([offsets.get(g, 0.0) for g in gold.flatten().tolist()], device=stack.device).view(gold.shape)
    scale = sub["ln_final.hook_scale"]
    comps = stack - stack.mean(-1, keepdim=True) if centres else stack
    contribution = ((comps / scale) * weight.to(stack.device) * d).sum(-1)  # (C, B, P)
    bias_terms = off + ((bias.to(stack.device) * d).sum(-1) if bias is not None else 0)
    total = (sub["ln_final.hook_out"] * d).sum(-1) + off
    where = []
    for label in labels:
        if label in ("embed", "pos_embed"):
            where.append(("embed", 0))
        elif m := re.fullmatch(r"(\d+)_(attn|mlp)_out", label):
            where.append((m.group(2), int(m.group(1)) + 1))
        else:
            raise LensDigitsError(f"dla: TransformerLens decomposed the residual into an unknown component {label!r}")
    pad = (gold < 0).to(stack.device)
    for t in (contribution, bias_terms, total):
        t.masked_fill_(pad, 0.0)
    if not bool(torch.isfinite(contribution).all() and torch.isfinite(total).all()):
        raise NonFiniteError("dla: the model's residual contributions are not finite (NaN or infinite); check the model's weights")
    return contribution.cpu(), where, bias_terms.cpu(), total.cpu()


def _kept(name: str) -> bool:
    """The hooks :func:`direct_contributions` reads: the embeddings, attention and MLP outputs, and the final norm's.

    Returns:
        Whether to cache hook ``name``.
    """
    return name in ("hook_embed", "hook_pos_embed") or name.endswith(("hook_attn_out", "hook_mlp_out")) or name.startswith("ln_final.hook_")


@register_method
class DirectLogitAttribution(Intervention):
    """Direct logit attribution of the embeddings, each attention and each MLP output (method ``dla``).

    Args:
        batch_size: Problems per forward pass.
    """

    name = "dla"
    targets = ("first", "answer")
    accuracy_means = "share positive"
    signed_metrics = ("contribution", "logit_diff", "bias")
    uses = {"batch_size": "batch_size"}

    def __init__(self, batch_size: int = 64) -> None:
        """Settings only; :meth:`score` runs the model.

        Raises:
            TransformerLensVersionError: The installed TransformerLens has no ``tools.analysis`` (before 3.9).
        """
        analysis_tools(self.name)
        self.batch_size = batch_size
        self._rivals: Rivals | None = None

    def score(self, model: ModelAdapter, data: ResidualSet, target: Target) -> Scores:
        """Each component's direct contribution per test problem and layer column (mean over the answer's positions).

        Returns:
            Scores with metrics ``contribution``, ``logit_diff``, ``bias``; breakdown ``component`` (and ``place`` for ``answer``).

        Raises:
            LensDigitsError: ``target`` is not ``first`` or ``answer``, or the model is not supported (see :func:`direct_contributions`).
        """
        if target not in self.targets:
            raise LensDigitsError(f"dla reads targets {list(self.targets)}, not {target!r}")
        if self._rivals is None:
            self._rivals = Rivals(model.tokenizer, model.d_vocab)
        n, n_cols = len(data), model.n_layers + 1
        n_pos = 1 if target == "first" else max(len(e.answer_ids) for e in data.encoded)
        value = torch.zeros(n, n_pos, n_cols, len(COMPONENTS), dtype=torch.float64)
        bias = torch.zeros(n, n_pos, dtype=torch.float64)
        total = torch.zeros(n, n_pos, dtype=torch.float64)
        gold = torch.full((n, n_pos), -1, dtype=torch.long)
        for i, e in enumerate(data.encoded):
            ids = e.answer_ids[:n_pos]
            gold[i, : len(ids)] = torch.tensor(ids)
        seqs = [list(e.prompt_ids) + (list(e.answer_ids[:-1]) if target == "answer" else []) for e in data.encoded]
        for batch in length_batches([len(s) for s in seqs], self.batch_size):
            tokens = torch.tensor([seqs[i] for i in batch], dtype=torch.long, device=model.device)
            start = torch.tensor([len(data.encoded[i].prompt_ids) - 1 for i in batch])
            pos = (start[:, None] + torch.arange(n_pos)).clamp(max=tokens.shape[1] - 1)
            contribution, where, b, t = direct_contributions(model, tokens, pos, gold[batch], self._rivals)
            for c, (kind, column) in enumerate(where):
                value[batch, :, column, COMPONENTS.index(kind)] += contribution[c].double()
            bias[batch], total[batch] = b.double(), t.double()
        real = gold >= 0  # (N, P)
        scores = self._scores(value, bias, total, real)
        if target == "answer":
            labels, index = place_positions(gold, self._rivals.text_of)
            scores.breakdown["place"] = {}
            for r, label in enumerate(labels):
                has = index[:, r] >= 0
                one = torch.zeros_like(real)
                one[has, index[has, r]] = True
                scores.breakdown["place"][label] = self._scores(value, bias, total, one, applies=has)
        return scores

    @staticmethod
    def _scores(value: Tensor, bias: Tensor, total: Tensor, positions: Tensor, applies: Tensor | None = None) -> Scores:
        """Scores of the mean over ``positions`` (per problem) of each component's contribution.

        Returns:
            The main scores (components summed) with a ``component`` breakdown.
        """
        m = positions.double()
        count = m.sum(1).clamp(min=1)  # (N,)
        per = (value * m[:, :, None, None]).sum(1) / count[:, None, None]  # (N, cols, comp)
        n_cols = per.shape[1]
        both = per.sum(-1)
        logit_diff = ((total * m).sum(1) / count)[:, None].expand(-1, n_cols).clone()
        bias_mean = ((bias * m).sum(1) / count)[:, None].expand(-1, n_cols).clone()
        metrics = {"contribution": both, "logit_diff": logit_diff, "bias": bias_mean}
        parts = {k: Scores(per[..., c] > 0, {"contribution": per[..., c]}, applies=applies) for c, k in enumerate(COMPONENTS)}
        return Scores(both > 0, metrics, {"component": parts}, applies=applies)

    def settings(self) -> dict[str, Any]:
        """What is attributed, for ``run.json``.

        Returns:
            ``difference``, ``norm`` and ``columns``: what the rows mean.
        """
        return {
            "difference": "gold token's logit minus the mean logit of the tokens of its form (other digits)",
            "norm": "final norm's scale frozen at the clean run",
            "columns": "0: embeddings; l + 1: block l's attention and MLP outputs",
            "batch_size": self.batch_size,
        }
