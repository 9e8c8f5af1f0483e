"""Figures of the number readings: the helix's fit quality, its causal score against its baselines, and the Fourier spectrum.

Each function takes an :class:`~lens_digits.results.grid.AccuracyGrid` holding
``helix_probe`` or ``fourier`` rows and returns a ``go.Figure`` (never shown).
The same views from the command line: ``lens-digits plot RUN --value r2``,
``--value recovered --facet patched --kind lines`` and ``--value energy --facet period``.
"""

from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from lens_digits.errors import LensDigitsError
from lens_digits.results.figures import heatmap

if TYPE_CHECKING:
    from torch import Tensor

    from lens_digits.methods.probes.helix import NumberFit
    from lens_digits.results.grid import AccuracyGrid

__all__ = ["causal_lines", "circle_projection", "fit_quality_heatmap", "spectrum_heatmap"]


def _rows(grid: "AccuracyGrid", method: str, target: str | None, keep: dict[str, str], free: str | None = None) -> pd.DataFrame:
    """The rows of ``method`` (and ``target``, default its first), with each breakdown column ``all`` but those of ``keep`` and ``free``.

    Returns:
        The rows.

    Raises:
        LensDigitsError: The grid has no rows of ``method`` for ``target``.
    """
    df = grid.table[grid.table["method"] == method]
    if df.empty:
        raise LensDigitsError(f"this grid has no {method} rows; run it with --methods {method}")
    target = target or str(df["target"].iloc[0])
    df = df[df["target"] == target]
    for column in grid.breakdown_columns:
        if column == free:
            continue
        df = df[df[column] == keep.get(column, "all")] if column in df.columns else df
    if df.empty:
        raise LensDigitsError(f"no {method} rows for target {target!r} and {keep or 'every row'}")
    return df


def fit_quality_heatmap(grid: "AccuracyGrid", target: str | None = None, value: str = "r2") -> go.Figure:
    """The helix's held-out R² (or ``accuracy``, ``control_r2``) per digit scale and layer column.

    Returns:
        A heatmap, x layer, y digit scale.

    Raises:
        LensDigitsError: The grid has no ``helix_probe`` rows.
    """
    df = _rows(grid, "helix_probe", target, {})
    where = grid.record.methods.get("helix_probe", {}).get("token", "")
    return heatmap(df, value=value, title=f"Helix fit: {value}", subtitle=f"{grid.model_name} · read at the {where}", label=value)


def causal_lines(grid: "AccuracyGrid", value: str = "recovered", target: str | None = None) -> go.Figure:
    """The causal score per layer column, one line per patch (full layer, helix, PCA, circle, polynomial), one panel per scale.

    ``value``: ``recovered`` (share of the full-layer patch's logit-difference change), ``logit_diff`` or ``accuracy`` (flip rate).

    Returns:
        The figure.

    Raises:
        LensDigitsError: The grid has no causal rows of ``helix_probe``.
    """
    df = _rows(grid, "helix_probe", target, {}, free="patched")
    df = df[df["patched"] != "all"] if "patched" in df.columns else df.iloc[:0]
    if df.empty:
        raise LensDigitsError("this grid's helix_probe has no causal rows; run it with causal=True")
    scales = sorted(df["scale"].unique())
    fig = make_subplots(rows=1, cols=len(scales), shared_yaxes=True, subplot_titles=[f"scale {s}" for s in scales])
    for col, scale in enumerate(scales, start=1):
        for k, patch in enumerate(dict.fromkeys(df["patched"])):
            cell = df[(df["scale"] == scale) & (df["patched"] == patch)].sort_values("layer")
            colour = qualitative.Plotly[k % len(qualitative.Plotly)]
            fig.add_trace(
                go.Scatter(
                    x=cell["layer"],
                    y=cell[value],
                    mode="lines+markers",
                    name=patch,
                    legendgroup=patch,
                    showlegend=col == 1,
                    line={"color": colour},
                ),
                row=1,
                col=col,
            )
    label = {"recovered": "share of the full-layer patch's effect", "logit_diff": "logit difference change", "accuracy": "flip rate"}
    where = grid.record.methods.get("helix_probe", {}).get("token", "its token")
    fig.update_layout(
        title=f"Helix patch against its baselines: {label.get(value, value)}<br><sup>at the {where}</sup>",
        template="plotly_white",
        height=380,
    )
    fig.update_xaxes(title_text="layer")
    return fig


def spectrum_heatmap(grid: "AccuracyGrid", target: str | None = None, place: str = "all") -> go.Figure:
    """The Fourier reading's energy share per period (y) and layer column (x), one panel per digit scale.

    Returns:
        The figure, one shared colour bar from 0 to 1.

    Raises:
        LensDigitsError: The grid has no ``fourier`` rows (for ``place``).
    """
    df = _rows(grid, "fourier", target, {"place": place} if place != "all" else {}, free="period")
    df = df[df["period"] != "all"]
    scales = sorted(df["scale"].unique())
    periods = list(dict.fromkeys(df["period"]))
    fig = make_subplots(rows=1, cols=len(scales), shared_yaxes=True, subplot_titles=[f"scale {s}" for s in scales])
    for col, scale in enumerate(scales, start=1):
        z = df[df["scale"] == scale].pivot(index="period", columns="layer", values="energy").reindex(periods)
        fig.add_trace(
            go.Heatmap(
                z=z.to_numpy(),
                x=list(z.columns),
                y=[p if p == "rest" else f"T={p}" for p in periods],
                zmin=0,
                zmax=1,
                colorscale="Viridis",
                showscale=col == 1,
                colorbar={"title": "energy share"},
            ),
            row=1,
            col=col,
        )
    lens = grid.record.methods.get("fourier", {}).get("lens", "logit_lens")
    fig.update_layout(title=f"Fourier spectrum of the {lens}'s logits over the numbers ({place})", template="plotly_white", height=340)
    fig.update_xaxes(title_text="layer")
    return fig


def circle_projection(fit: "NumberFit", x: "Tensor", n: "Tensor", period: float | int) -> go.Figure:
    """Residuals ``x`` of numbers ``n`` in the plane of a helix fit's circle of ``period``, coloured by ``n mod period``.

    Each residual's coordinates are the values of the circle's ``cos`` and ``sin`` functions (less their train means)
    that, with the fit's other functions, explain it best by least squares; a residual the fit explains exactly
    lands on the line, the fitted circle itself.
    With a :class:`~lens_digits.methods.interventions.helix.HelixProbe` after a sweep:
    ``circle_projection(probe.fit_of(2, layer), probe.test_residuals[rows, layer], probe.test_numbers[rows], 10)``.

    Returns:
        The figure.

    Raises:
        LensDigitsError: The fit has no circle of ``period`` (a polynomial, or another period set).
    """
    import math

    import torch

    if fit.kind == "polynomial" or not any(abs(p - period) < 1e-9 for p in fit.periods):
        raise LensDigitsError(f"this fit has no circle of period {period}; its periods are {list(fit.periods)} ({fit.kind})")
    k = [abs(p - period) < 1e-9 for p in fit.periods].index(True)
    first = (1 if fit.kind == "helix" else 0) + 2 * k
    # every basis function's value that best explains each residual (the fit's own inverse), then the circle's two
    coords = torch.linalg.lstsq(fit.coef.T, fit.project(x).T).solution.T[:, first : first + 2]  # (problem, 2)
    angle = torch.linspace(0, 2 * math.pi, 200, dtype=torch.float64)
    ring = torch.stack([angle.cos(), angle.sin()], 1) - fit.basis_mean[first : first + 2]  # the fit's own circle, centred
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ring[:, 0], y=ring[:, 1], mode="lines", name="fitted circle", line={"color": "grey"}))
    residue = (n.double() % period).tolist()
    fig.add_trace(
        go.Scatter(
            x=coords[:, 0],
            y=coords[:, 1],
            mode="markers+text" if len(n) <= 40 else "markers",
            text=[str(int(v)) for v in n.tolist()],
            textposition="top center",
            marker={"color": residue, "colorscale": "HSV", "cmin": 0, "cmax": period, "colorbar": {"title": f"n mod {period:g}"}},
            name="test problems",
        )
    )
    fig.update_layout(
        title=f"The helix's circle of period {period:g}",
        template="plotly_white",
        width=560,
        height=560,
        legend={"orientation": "h", "y": -0.18},
    )
    fig.update_xaxes(title_text=f"cos(2πn/{period:g}) direction")
    fig.update_yaxes(title_text=f"sin(2πn/{period:g}) direction", scaleanchor="x")
    return fig
