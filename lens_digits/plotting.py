"""Plotly figures of accuracy grids. Functions return ``go.Figure`` and never show it."""

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lens_digits.errors import LensDigitsError

TITLE = "Accuracy Breakdown"


def _panels(df: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(df["method"], df["target"], strict=True)))


def heatmap(
    df: pd.DataFrame,
    *,
    value: str = "accuracy",
    title: str = TITLE,
    subtitle: str = "",
    zmin: float = 0.0,
    zmax: float = 1.0,
    colorscale: str = "Viridis",
) -> go.Figure:
    """Heatmap of a tidy grid: x ``layer``, y ``Digit Scale``, colour ``value``.

    One panel per (method, target) in the table, stacked, sharing one colorbar.
    Hovering a cell shows its value, ``n``, its 95% interval and its baseline
    (a lens's constant-answer baseline, a probe's chance) where the table has them.

    Args:
        df: Rows with columns ``method, target, scale, layer, n`` and ``value``;
            one row per cell (filter breakdown rows out first).
        value: Column to colour by.
        title: Figure title.
        subtitle: A line under the title saying what is shown (model, targets, n).
        zmin: Bottom of the colour scale.
        zmax: Top of the colour scale.
        colorscale: A plotly colour scale name.
    """
    panels = _panels(df)
    fig = make_subplots(
        rows=len(panels),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.18 / max(1, len(panels)),
        subplot_titles=[f"{m} · target={t}" for m, t in panels] if len(panels) > 1 else None,
    )
    for row, (method, target) in enumerate(panels, start=1):
        cell = df[(df["method"] == method) & (df["target"] == target)]
        z = cell.pivot(index="scale", columns="layer", values=value).sort_index()
        extras = [c for c in ("n", "ci_low", "ci_high", "baseline", "chance") if c in cell.columns and cell[c].notna().any()]
        custom = np.stack([cell.pivot(index="scale", columns="layer", values=c).reindex_like(z).to_numpy(dtype=float) for c in extras], -1)
        hover = "layer %{x}<br>digit scale %{y}<br>" + value + " %{z:.3f}"
        labels = {
            "n": "<br>n %{customdata[I]:.0f}",
            "baseline": "<br>baseline %{customdata[I]:.3f}",
            "chance": "<br>chance %{customdata[I]:.3f}",
        }
        for i, c in enumerate(extras):
            if c == "ci_low":
                hover += f"<br>95% interval %{{customdata[{i}]:.3f}} to %{{customdata[{i + 1}]:.3f}}"
            elif c in labels:
                hover += labels[c].replace("[I]", f"[{i}]")
        fig.add_trace(
            go.Heatmap(
                z=z.to_numpy(),
                x=[int(c) for c in z.columns],
                y=[str(int(s)) for s in z.index],
                customdata=custom,
                coloraxis="coloraxis",
                name=f"{method} · {target}",
                hovertemplate=hover + "<extra>%{fullData.name}</extra>",
            ),
            row=row,
            col=1,
        )
        fig.update_yaxes(title_text="Digit Scale", type="category", row=row, col=1)
        last = row == len(panels)  # panels share the x axis: title it once, at the bottom
        fig.update_xaxes(title_text="layer" if last else None, dtick=1 if cell["layer"].max() <= 32 else None, row=row, col=1)
    fig.update_layout(
        title={"text": title, "subtitle": {"text": subtitle}} if subtitle else title,
        coloraxis={"colorscale": colorscale, "cmin": zmin, "cmax": zmax, "colorbar": {"title": {"text": value}}},
        height=max(320, 90 + 230 * len(panels)),
        width=max(560, 40 * int(df["layer"].max() + 1) + 220) if len(df) else 560,
        margin={"t": 100 if subtitle else 80},
    )
    return fig


def difference_heatmap(df: pd.DataFrame, *, value: str = "accuracy", title: str = "Accuracy Difference", subtitle: str = "") -> go.Figure:
    """Heatmap of a signed grid (a difference, or selectivity), red below zero and blue above."""
    bound = float(df[value].abs().max()) if len(df) else 1.0
    bound = 1.0 if not math.isfinite(bound) or bound == 0 else bound
    return heatmap(df, value=value, title=title, subtitle=subtitle, zmin=-bound, zmax=bound, colorscale="RdBu")


def static_image(fig: go.Figure, *, format: str = "png", scale: float = 1.0, **options: Any) -> bytes:
    """The figure as a static image (PNG by default), rendered by kaleido.

    For places that cannot run plotly.js, such as a notebook shown on GitHub.
    Needs ``kaleido>=1`` (not a dependency of this package) and a Chrome or
    Chromium that kaleido finds (or the ``BROWSER_PATH`` environment variable
    names); a notebook can catch the error and go on without the image.

    Args:
        fig: The figure.
        format: ``png``, ``jpeg``, ``webp``, ``svg`` or ``pdf``.
        scale: Pixels per layout pixel.
        **options: Passed on to ``fig.to_image`` (``width``, ``height``).

    Raises:
        LensDigitsError: Static export is unavailable here (no kaleido, no
            browser, or the export failed); the message says what to install.
    """
    try:
        return fig.to_image(format=format, scale=scale, **options)
    except Exception as e:  # kaleido missing (ValueError/ImportError), no Chrome (RuntimeError), browser failures
        text = " ".join(str(e).split()) or type(e).__name__
        first = text.split(". ")[0].rstrip(".")
        first = first if len(first) <= 100 else first[:97] + "..."
        raise LensDigitsError(
            f"static image export is unavailable ({first}); it needs `pip install 'kaleido>=1'` and Chrome or Chromium "
            "(run `plotly_get_chrome`, or set BROWSER_PATH to the browser's binary)"
        ) from e
