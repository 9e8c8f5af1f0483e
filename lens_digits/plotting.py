"""Plotly figures of accuracy grids. Functions return ``go.Figure`` and never show it."""

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

TITLE = "Accuracy Breakdown"


def _panels(df: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(df["method"], df["target"], strict=True)))


def heatmap(
    df: pd.DataFrame,
    *,
    value: str = "accuracy",
    title: str = TITLE,
    zmin: float = 0.0,
    zmax: float = 1.0,
    colorscale: str = "Viridis",
) -> go.Figure:
    """Heatmap of a tidy grid: x ``layer``, y ``Digit Scale``, colour ``value``.

    One panel per (method, target) in the table, stacked, sharing one colorbar.
    Hovering a cell shows its value and ``n``.

    Args:
        df: Rows with columns ``method, target, scale, layer, n`` and ``value``;
            one row per cell (filter breakdown rows out first).
        value: Column to colour by.
        title: Figure title.
        zmin: Bottom of the colour scale.
        zmax: Top of the colour scale.
        colorscale: A plotly colour scale name.
    """
    panels = _panels(df)
    fig = make_subplots(
        rows=len(panels),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.12 / max(1, len(panels)),
        subplot_titles=[f"{m} · target={t}" for m, t in panels] if len(panels) > 1 else None,
    )
    for row, (method, target) in enumerate(panels, start=1):
        cell = df[(df["method"] == method) & (df["target"] == target)]
        z = cell.pivot(index="scale", columns="layer", values=value).sort_index()
        n = cell.pivot(index="scale", columns="layer", values="n").reindex_like(z)
        fig.add_trace(
            go.Heatmap(
                z=z.to_numpy(),
                x=[int(c) for c in z.columns],
                y=[str(int(s)) for s in z.index],
                customdata=n.to_numpy(),
                coloraxis="coloraxis",
                name=f"{method} · {target}",
                hovertemplate=(
                    "layer %{x}<br>digit scale %{y}<br>" + value + " %{z:.3f}<br>n %{customdata}<extra>%{fullData.name}</extra>"
                ),
            ),
            row=row,
            col=1,
        )
        fig.update_yaxes(title_text="Digit Scale", type="category", row=row, col=1)
        fig.update_xaxes(title_text="layer", dtick=1 if cell["layer"].max() <= 32 else None, row=row, col=1)
    fig.update_layout(
        title=title,
        coloraxis={"colorscale": colorscale, "cmin": zmin, "cmax": zmax, "colorbar": {"title": {"text": value}}},
        height=max(320, 90 + 230 * len(panels)),
        width=max(560, 40 * int(df["layer"].max() + 1) + 220) if len(df) else 560,
        margin={"t": 80},
    )
    return fig


def difference_heatmap(df: pd.DataFrame, *, title: str = "Accuracy Difference") -> go.Figure:
    """Heatmap of a difference grid (accuracy in -1..1), red below zero and blue above."""
    bound = float(df["accuracy"].abs().max()) if len(df) else 1.0
    bound = 1.0 if not math.isfinite(bound) or bound == 0 else bound
    return heatmap(df, title=title, zmin=-bound, zmax=bound, colorscale="RdBu")
