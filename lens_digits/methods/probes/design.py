"""The probes' design matrix: train residuals standardised per group and layer, groups padded, labels and allowed digits."""

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lens_digits.problems.digits import N_DIGITS
from lens_digits.residuals.collect import ResidualSet


def design(
    train: ResidualSet, group: Int[Tensor, " problem"], n_groups: int, labels: Int[Tensor, "problem task"], device: torch.device
) -> tuple[
    Float[Tensor, "group layer n d_model_1"],
    Float[Tensor, "group n"],
    Int[Tensor, "group n task"],
    Float[Tensor, "group layer d_model"],
    Float[Tensor, "group layer d_model"],
    Bool[Tensor, "group task digit"],
]:
    """Standardised train features (last prompt position) of each probe group, padded to the largest group.

    Features are standardised with each group's *train* mean and population
    standard deviation, per layer column (in float64; a constant feature keeps
    scale 1); a last column of ones carries the intercept. Padding rows have
    weight 0.

    Args:
        train: The train residuals.
        group: Each train problem's probe group.
        n_groups: How many groups.
        labels: Each train problem's label per task (digit places, then the control task's).
        device: Where the solver runs.

    Returns:
        ``(x, sample_weight, labels, mean, std, classes)``: the features with the
        intercept column, 1 on real rows and 0 on padding, the labels per group
        row, the standardisation, and the digits each group's labels use (a
        probe never predicts a digit its train labels lack).
    """
    n_layers, dim = train.n_columns, train.resid.shape[-1]
    rows = [torch.nonzero(group == g)[:, 0] for g in range(n_groups)]
    n_max = max(len(r) for r in rows)
    x = torch.zeros(n_groups, n_layers, n_max, dim + 1, device=device)  # last column: the intercept's ones
    x[..., dim] = 1
    sw = torch.zeros(n_groups, n_max, device=device)
    out_labels = torch.zeros(n_groups, n_max, labels.shape[1], dtype=torch.long)
    mean = torch.zeros(n_groups, n_layers, dim, device=device)
    std = torch.ones(n_groups, n_layers, dim, device=device)
    for g, r in enumerate(rows):
        feats = train.resid[r.to(train.resid.device), :, 0, :].to(device).transpose(0, 1)  # (L, n_g, d)
        stats = [torch.var_mean(layer.double(), dim=0, correction=0) for layer in feats]  # float64, a layer at a time
        sd, mu = torch.stack([v for v, _ in stats]).sqrt(), torch.stack([m for _, m in stats])
        sd = torch.where(sd < 10 * torch.finfo(torch.float64).eps, torch.ones_like(sd), sd)
        mean[g], std[g] = mu.float(), sd.float()
        x[g, :, : len(r), :dim] = (feats - mean[g][:, None]) / std[g][:, None]
        sw[g, : len(r)] = 1
        out_labels[g, : len(r)] = labels[r]
        del feats
    classes = torch.zeros(n_groups, labels.shape[1], N_DIGITS, dtype=torch.bool)
    for g, r in enumerate(rows):
        classes[g] = torch.nn.functional.one_hot(out_labels[g, : len(r)], N_DIGITS).any(0)
    return x, sw, out_labels, mean, std, classes
