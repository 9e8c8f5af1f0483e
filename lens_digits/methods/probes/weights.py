"""A fitted probe set: its tensors, how the regularisation strength is chosen, and its files.

:class:`ProbeWeights` holds one 10-way classifier per (group, layer, place);
:func:`best_strength` picks, per layer and place, the C with the lowest
validation cross-entropy; :func:`save_weights` and :func:`load_weights` write and
read ``probe.safetensors`` + ``probe.json``.
"""

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lens_digits.errors import LensDigitsError, first_line
from lens_digits.methods.probes.lbfgs import NEG

if TYPE_CHECKING:
    from lens_digits.residuals.collect import ResidualSet
from lens_digits.model.finite import check_finite
from lens_digits.problems.digits import N_DIGITS

FORMAT = "lens_digits.probe/2"


@dataclass
class ProbeWeights:
    """A fitted probe set: one 10-way classifier per (group, layer, place).

    Logits are ``((resid - mean) / std) @ W + b``; :meth:`raw` folds the
    standardisation in, giving weights that act on the raw residual (for example
    to compare a digit direction with the unembedding).

    Attributes:
        W: Weights in standardised space.
        b: Intercepts.
        mean: Train mean of each feature.
        std: Train standard deviation of each feature (1 where it was 0).
        classes: Digits each probe may predict (those seen in its train labels).
        C: The inverse regularisation strength chosen on validation problems.
    """

    W: Float[Tensor, "group layer place d_model digit"]
    b: Float[Tensor, "group layer place digit"]
    mean: Float[Tensor, "group layer d_model"]
    std: Float[Tensor, "group layer d_model"]
    classes: Bool[Tensor, "group place digit"]
    C: Float[Tensor, "group layer place"]

    def raw(self) -> tuple[Float[Tensor, "group layer place d_model digit"], Float[Tensor, "group layer place digit"]]:
        """Weights and intercepts acting on the raw residual: ``resid @ W_raw + b_raw``.

        Returns:
            ``W_raw`` (``W`` divided by each feature's ``std``) and ``b_raw`` (``b`` less the mean's contribution).
        """
        w_raw = self.W / self.std[:, :, None, :, None]
        b_raw = self.b - torch.einsum("gld,glpdk->glpk", self.mean, w_raw)
        return w_raw, b_raw

    def logits(self, resid: Float[Tensor, "problem layer d_model"], group: int) -> Float[Tensor, "problem layer place digit"]:
        """Logits of every probe of ``group`` on residuals at the last prompt position.

        Digits a probe may not predict get a very negative logit.

        Returns:
            Per problem, layer, place and digit, the probe's logit.
        """
        x = ((resid.to(self.W) - self.mean[group]) / self.std[group]).transpose(0, 1)  # (L, n, d)
        n_layers, n, _ = x.shape
        n_places = self.W.shape[2]
        w = self.W[group].permute(0, 2, 1, 3).reshape(n_layers, -1, n_places * N_DIGITS)  # (L, d, place*k)
        z = torch.baddbmm(self.b[group].reshape(n_layers, 1, -1), x, w).view(n_layers, n, n_places, N_DIGITS)
        return z.masked_fill(~self.classes[group][None, None], NEG).transpose(0, 1)

    def to(self, device: str | torch.device) -> "ProbeWeights":
        """A copy on ``device``.

        Returns:
            A new :class:`ProbeWeights` with every tensor moved to ``device``.
        """
        return ProbeWeights(*(t.to(device) for t in (self.W, self.b, self.mean, self.std, self.classes, self.C)))

    def places(self, which: slice) -> "ProbeWeights":
        """The probes of some places (the task's, or the control task's, of a joint fit).

        Returns:
            A new :class:`ProbeWeights` holding the places ``which`` selects, sharing ``mean`` and ``std``.
        """
        return ProbeWeights(
            self.W[:, :, which].contiguous(),
            self.b[:, :, which].contiguous(),
            self.mean,
            self.std,
            self.classes[:, which].contiguous(),
            self.C[:, :, which].contiguous(),
        )

    @classmethod
    def chosen(
        cls,
        W: Float[Tensor, "group layer c place d_model digit"],
        b: Float[Tensor, "group layer c place digit"],
        mean: Float[Tensor, "group layer d_model"],
        std: Float[Tensor, "group layer d_model"],
        classes: Bool[Tensor, "group place digit"],
        index: Int[Tensor, "group layer place"],
        Cs: Sequence[float],
    ) -> "ProbeWeights":
        """The probes of a C grid fit, keeping for each (group, layer, place) the C at ``index``.

        Returns:
            The chosen probes, with ``C`` holding each one's strength from ``Cs``.
        """
        dim = W.shape[-2]
        w = W.gather(2, index[:, :, None, :, None, None].expand(-1, -1, 1, -1, dim, N_DIGITS))[:, :, 0]
        bias = b.gather(2, index[:, :, None, :, None].expand(-1, -1, 1, -1, N_DIGITS))[:, :, 0]
        c = torch.tensor(list(Cs), dtype=torch.float64, device=W.device)[index]
        return cls(w, bias, mean, std, classes, c)


def best_strength(
    W: Float[Tensor, "layer c place d_model digit"],
    b: Float[Tensor, "layer c place digit"],
    mean: Float[Tensor, "layer d_model"],
    std: Float[Tensor, "layer d_model"],
    classes: Bool[Tensor, "place digit"],
    feats: Float[Tensor, "problem layer d_model"],
    labels: Int[Tensor, "problem place"],
) -> Int[Tensor, "layer place"]:
    """Index of the C with the lowest validation cross-entropy per layer and place.

    Cross-entropy, a proper score, changes continuously with the residuals; validation accuracy (a count of a few
    problems) jumps when one validation problem sits on a decision boundary, and residuals of other batch sizes, which
    differ in their last bits, would then choose another C. Values within float32 noise of the lowest (relative 1e-5)
    are ties, and the smallest C among them wins.

    Returns:
        Per layer and place, the index into the C axis of ``W``.
    """
    n_layers, n_c = W.shape[0], W.shape[1]
    n = feats.shape[0]
    xs = ((feats - mean) / std).transpose(0, 1)  # (L, n, d)
    w_all = einops.rearrange(W, "layer c task d digit -> layer d (c task digit)")
    z = torch.baddbmm(b.reshape(n_layers, 1, -1), xs, w_all).view(n_layers, n, n_c, -1, N_DIGITS)
    z = z.masked_fill(~classes[None, None, None], NEG)
    lab = labels[None, :, None, :].expand(n_layers, -1, n_c, -1)  # (L, n, C, place)
    ce = (z.logsumexp(-1) - z.gather(-1, lab[..., None])[..., 0]).clamp(max=50).double().mean(1)  # (L, C, place)
    # Cross-entropies within float32 noise of the best are ties (residuals of other batch sizes differ in the last
    # bits): the smallest such C wins, so the choice does not hang on rounding.
    near = ce <= ce.amin(1, keepdim=True) * (1 + 1e-5) + 1e-7
    first = torch.arange(ce.shape[1], device=ce.device)[None, :, None].expand_as(ce)
    return torch.where(near, first, ce.shape[1]).amin(1)


def choose_strengths(
    W: Float[Tensor, "group layer c place d_model digit"],
    b: Float[Tensor, "group layer c place digit"],
    mean: Float[Tensor, "group layer d_model"],
    std: Float[Tensor, "group layer d_model"],
    classes: Bool[Tensor, "group place digit"],
    val: "ResidualSet",
    group: Int[Tensor, " problem"],
    labels: Int[Tensor, "problem place"],
    default: int,
) -> tuple[Int[Tensor, "group layer place"], list[int]]:
    """The C of each (group, layer, place) chosen on the validation problems by :func:`best_strength`.

    Args:
        W: Weights of every C, per group and layer.
        b: Their intercepts.
        mean: Train means of the features.
        std: Train standard deviations of the features.
        classes: Digits each probe may predict.
        val: The validation residuals (the last prompt position is read).
        group: Each validation problem's probe group.
        labels: Each validation problem's labels per place (the control task's after the task's).
        default: Index of the C used for a group without validation problems.

    Returns:
        The index of the chosen C per group, layer and place, and the groups that had no validation problems.
    """
    n_groups, n_layers, _, n_places = W.shape[:4]
    chosen = torch.full((n_groups, n_layers, n_places), default, dtype=torch.long)
    empty = []
    for g in range(n_groups):
        r = torch.nonzero(group == g)[:, 0]
        if len(r) == 0:
            empty.append(g)
            continue
        feats = val.resid[r.to(val.resid.device), :, 0, :].to(W.device)  # (n, L, d)
        chosen[g] = best_strength(W[g], b[g], mean[g], std[g], classes[g], feats, labels[r].to(W.device)).cpu()
    return chosen, empty


def default_c_index(cs: Sequence[float]) -> int:
    """Index of the C nearest 1 (on a log scale), used where no validation problems exist.

    Returns:
        The index into ``cs`` (the first one on a tie).
    """
    return min(range(len(cs)), key=lambda i: abs(math.log(cs[i])))


def save_weights(path: str | os.PathLike[str], weights: ProbeWeights, control: ProbeWeights | None, meta: dict[str, Any]) -> Path:
    """Write ``probe.safetensors`` (the tensors) and ``probe.json`` (``meta``) into folder ``path``.

    Returns:
        The folder, created if needed.
    """
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: getattr(weights, name).detach().cpu().contiguous() for name in ("W", "b", "mean", "std", "classes", "C")}
    if control is not None:
        for name in ("W", "b", "classes", "C"):
            tensors[f"control.{name}"] = getattr(control, name).detach().cpu().contiguous()
    save_file(tensors, str(folder / "probe.safetensors"))
    (folder / "probe.json").write_text(json.dumps({"format": FORMAT} | meta, indent=2) + "\n")
    return folder


def load_weights(
    path: str | os.PathLike[str], device: str | torch.device | None = None
) -> tuple[ProbeWeights, ProbeWeights | None, dict[str, Any]]:
    """Read what :func:`save_weights` wrote: the probes, the control probes (or None) and the settings.

    Returns:
        The probes, the control probes (None where none were saved) and the settings of ``probe.json``.

    Raises:
        LensDigitsError: ``path`` lacks ``probe.json`` or ``probe.safetensors``, either cannot be read,
            ``probe.json`` is not a JSON object, or its format is not this version's.
        NonFiniteError: A saved floating-point tensor holds NaN or infinite values.
    """
    from safetensors.torch import load_file

    folder = Path(path)
    if not (folder / "probe.json").is_file() or not (folder / "probe.safetensors").is_file():
        raise LensDigitsError(f"{str(path)!r} is not a saved probe: it needs probe.json and probe.safetensors")
    try:
        meta = json.loads((folder / "probe.json").read_text())
    except (OSError, ValueError) as e:
        raise LensDigitsError(f"{str(folder / 'probe.json')!r} cannot be read ({first_line(e)}); save the probe again") from None
    if not isinstance(meta, dict):
        raise LensDigitsError(f"{str(folder / 'probe.json')!r} must hold a JSON object; save the probe again")
    if meta.get("format") != FORMAT:
        old = meta.get("format") == "lens_digits.probe/1"
        hint = "; it was saved with the earlier shuffled-label control: fit the probe again" if old else ""
        raise LensDigitsError(f"{str(path)!r} holds format {meta.get('format')!r}, not {FORMAT!r}{hint}")
    try:
        t = load_file(str(folder / "probe.safetensors"), device=str(device or "cpu"))
        weights = ProbeWeights(t["W"], t["b"], t["mean"], t["std"], t["classes"], t["C"])
        control = None
        if "control.W" in t:
            control = ProbeWeights(t["control.W"], t["control.b"], t["mean"], t["std"], t["control.classes"], t["control.C"])
    except Exception as e:  # safetensors, a missing tensor; the user needs one line
        raise LensDigitsError(f"{str(folder / 'probe.safetensors')!r} cannot be read ({first_line(e)}); save the probe again") from None
    for name, tensor in t.items():
        if tensor.is_floating_point():
            check_finite(tensor, f"the saved probe {str(folder)!r}: tensor {name!r}", "it cannot be used; fit the probe again")
    return weights, control, meta
