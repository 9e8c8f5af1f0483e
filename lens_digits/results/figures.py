"""Plotly figures of accuracy grids. Functions return ``go.Figure`` and never show it."""

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from lens_digits.errors import LensDigitsError

__all__ = ["COLORSCALES", "TITLE", "difference_heatmap", "heatmap", "lines", "static_image", "wrap"]

TITLE = "Accuracy Breakdown"

COLORSCALES = ("Viridis", "Blues", "Cividis", "Plasma", "Greys")
"""Heatmap colour scales the command line offers (any plotly name works from Python)."""


MARKER_COLOUR = "#e8000b"
"""Emergence markers: red reads on every offered colour scale, dark or light."""
MARKERS = {0: "circle-open", 1: "diamond-open", 2: "square-open", 3: "triangle-up-open"}


def _panels(df: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(df["method"], df["target"], strict=True)))


def wrap(text: str, width: int = 100, sep: str = " · ") -> str:
    """``text`` with ``<br>`` between its ``sep``-joined parts wherever a line would pass ``width`` characters.

    Returns:
        The wrapped text; a single part longer than ``width`` stays on its own line unbroken.

    >>> wrap("a · b · c", width=5)
    'a · b<br>c'
    """
    lines: list[str] = []
    for part in text.split(sep):
        if lines and len(lines[-1]) + len(sep) + len(part) <= width:
            lines[-1] += sep + part
        else:
            lines.append(part)
    return "<br>".join(lines)


def _layout(fig: go.Figure, title: str, subtitle: str, width: int, height: int, legend: bool = False) -> None:
    """Title, subtitle wrapped to the figure's width, a top margin that fits them, and room for a legend at the bottom."""
    lines = wrap(subtitle, width=max(40, width // 7)) if subtitle else ""
    n_lines = lines.count("<br>") + 1 if lines else 0
    fig.update_layout(
        title={"text": title, "subtitle": {"text": lines}} if lines else title,
        height=height + 18 * max(0, n_lines - 1),
        width=width,
        margin={"t": 80 + 20 * n_lines, "b": 100 if legend else 60},
    )


def heatmap(
    df: pd.DataFrame,
    *,
    value: str = "accuracy",
    title: str = TITLE,
    subtitle: str = "",
    zmin: float = 0.0,
    zmax: float = 1.0,
    colorscale: str = "Viridis",
    facet: str | None = None,
    text: bool = False,
    emergence: pd.DataFrame | None = None,
) -> go.Figure:
    """Heatmap of a tidy grid: x ``layer``, y ``Digit Scale``, colour ``value``.

    One row of panels per (method, target) in the table, sharing one colorbar;
    with ``facet`` (a breakdown column such as ``place`` or ``carries``), one
    column of panels per label of that column. Hovering a cell shows its value,
    ``n``, its 95% interval and its baseline (a lens's constant-answer baseline,
    a probe's chance) where the table has them.

    Args:
        df: Rows with columns ``method, target, scale, layer, n`` and ``value``;
            one row per cell and facet label (filter other breakdown rows out first).
        value: Column to colour by.
        title: Figure title.
        subtitle: What is shown (model, targets, n); wrapped to the figure's width.
        zmin: Bottom of the colour scale.
        zmax: Top of the colour scale.
        colorscale: A plotly colour scale name (``Viridis``, ``Blues``, ...).
        facet: Breakdown column whose labels get a column of panels each.
        text: Write each cell's value in it.
        emergence: Emergence rows (see :mod:`lens_digits.results.emergence`) matching
            ``df``'s cells: each threshold's first layer is marked on its scale's row.

    Returns:
        The figure, not shown.
    """
    panels = _panels(df)
    labels = list(dict.fromkeys(df[facet])) if facet else [None]
    faceted = facet is not None
    fig = make_subplots(
        rows=len(panels),
        cols=len(labels),
        shared_xaxes=True,
        vertical_spacing=0.18 / max(1, len(panels)),
        horizontal_spacing=0.06 / max(1, len(labels) - 1) if len(labels) > 1 else 0.0,
        # faceted: a title per column (the label) and per row (method and target, on the right); else one per panel
        subplot_titles=[f"{m} · target={t}" for m, t in panels] if len(panels) > 1 and not faceted else None,
        column_titles=[f"{facet} {label}" for label in labels] if faceted else None,
        row_titles=[f"{m} · {t}" for m, t in panels] if faceted and len(panels) > 1 else None,
    )
    scales = [str(int(s)) for s in sorted(df["scale"].unique())]
    thresholds = sorted(emergence["threshold"].unique()) if emergence is not None and len(emergence) else []
    shown: set[float] = set()
    for row, (method, target) in enumerate(panels, start=1):
        for col, label in enumerate(labels, start=1):
            cell = df[(df["method"] == method) & (df["target"] == target)]
            if facet:
                cell = cell[cell[facet] == label]
            if cell.empty:
                continue
            # every panel has a row for every scale (NaN where it has no cells), so that panels line up
            z = cell.pivot(index="scale", columns="layer", values=value).reindex([int(x) for x in scales])
            fig.add_trace(_heatmap_trace(cell, z, value, f"{method} · {target}" + (f" · {label}" if facet else ""), text), row=row, col=col)
            for k, t in enumerate(thresholds):
                assert emergence is not None
                e = emergence[(emergence["method"] == method) & (emergence["target"] == target) & (emergence["threshold"] == t)]
                if facet and facet in e.columns:
                    e = e[e[facet] == label]
                e = e[e["layer"].notna() & e["scale"].isin(z.index)]
                if e.empty:  # an empty trace with empty customdata breaks plotly.js's static export
                    continue
                # side by side within the cell (thresholds met at the same layer stay visible); with text, at its left edge
                shift = -0.4 + 0.13 * k if text else (k - (len(thresholds) - 1) / 2) * 0.26
                fig.add_trace(
                    go.Scatter(
                        x=(e["layer"].astype(int) + shift).tolist(),
                        y=[str(int(s)) for s in e["scale"]],
                        mode="markers",
                        marker={
                            "symbol": MARKERS.get(k, "x-open"),
                            "size": 10 if text else 14,
                            "color": MARKER_COLOUR,
                            "line": {"width": 2.5},
                        },
                        name=f"first layer with {value} ≥ {t:g}",
                        legendgroup=f"t{t}",
                        showlegend=t not in shown,
                        customdata=e[["layer", "ci_low", "ci_high"]].to_numpy(dtype=float),
                        hovertemplate=f"first layer with {value} ≥ {t:g}: %{{customdata[0]}}"
                        "<br>95% interval %{customdata[1]} to %{customdata[2]}<extra></extra>",
                    ),
                    row=row,
                    col=col,
                )
                shown.add(t)
            fig.update_yaxes(title_text="Digit Scale" if col == 1 else None, type="category", row=row, col=col)
            last = row == len(panels)  # panels share the x axis: title it once, at the bottom
            fig.update_xaxes(
                title_text="layer" if last else None,
                dtick=1 if cell["layer"].max() <= 32 else None,
                range=[-0.5, float(df["layer"].max()) + 0.5],  # the cells alone: a marker at a cell's edge does not widen it
                row=row,
                col=col,
            )
    fig.update_layout(
        coloraxis={"colorscale": colorscale, "cmin": zmin, "cmax": zmax, "colorbar": {"title": {"text": value}}},
        legend={"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.0, "x": 0},
    )
    n_layers = int(df["layer"].max() + 1) if len(df) else 1
    width = max(560, len(labels) * (36 * n_layers + 60) + 220)
    _layout(fig, title, subtitle, width, max(340, 110 + 230 * len(panels)) + (40 if shown else 0), legend=bool(shown))
    return fig


def _heatmap_trace(cell: pd.DataFrame, z: pd.DataFrame, value: str, name: str, text: bool) -> go.Heatmap:
    """One panel's heatmap, with ``n``, interval and baseline in the hover text.

    Returns:
        The heatmap trace of ``z``, on the shared colour axis.
    """
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
    return go.Heatmap(
        z=z.to_numpy(),
        x=[int(c) for c in z.columns],
        y=[str(int(s)) for s in z.index],
        customdata=custom,
        coloraxis="coloraxis",
        name=name,
        texttemplate="%{z:.2f}" if text else None,
        hovertemplate=hover + "<extra>%{fullData.name}</extra>",
    )


def lines(df: pd.DataFrame, *, value: str = "accuracy", title: str = TITLE, subtitle: str = "") -> go.Figure:
    """``value`` against layer, one line per digit scale with its 95% band, one panel per (method, target).

    The band is the Wilson interval (``ci_low`` to ``ci_high``) where ``value``
    is ``accuracy``; other values are drawn without one.

    Returns:
        The figure, not shown.
    """
    panels = _panels(df)
    fig = make_subplots(
        rows=len(panels),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.18 / max(1, len(panels)),
        subplot_titles=[f"{m} · target={t}" for m, t in panels] if len(panels) > 1 else None,
    )
    scales = sorted(df["scale"].unique())
    palette = qualitative.Plotly
    band = value == "accuracy" and {"ci_low", "ci_high"} <= set(df.columns)
    for row, (method, target) in enumerate(panels, start=1):
        panel = df[(df["method"] == method) & (df["target"] == target)]
        for k, scale in enumerate(scales):
            cell = panel[panel["scale"] == scale].sort_values("layer")
            if cell.empty:
                continue
            colour = palette[k % len(palette)]
            if band:
                fig.add_trace(
                    go.Scatter(
                        x=cell["layer"].tolist() + cell["layer"].tolist()[::-1],
                        y=cell["ci_high"].tolist() + cell["ci_low"].tolist()[::-1],
                        mode="lines",
                        fill="toself",
                        fillcolor=_rgba(colour, 0.18),
                        line={"width": 0},
                        hoverinfo="skip",
                        showlegend=False,
                        legendgroup=str(scale),
                    ),
                    row=row,
                    col=1,
                )
            fig.add_trace(
                go.Scatter(
                    x=cell["layer"],
                    y=cell[value],
                    mode="lines+markers",
                    line={"color": colour},
                    name=f"scale {scale}",
                    legendgroup=str(scale),
                    showlegend=row == 1,
                    customdata=cell[["n"]].to_numpy(dtype=float),
                    hovertemplate=f"scale {scale}<br>layer %{{x}}<br>{value} %{{y:.3f}}<br>n %{{customdata[0]:.0f}}<extra></extra>",
                ),
                row=row,
                col=1,
            )
        fig.update_yaxes(title_text=value, range=[-0.02, 1.02] if value == "accuracy" else None, row=row, col=1)
        fig.update_xaxes(
            title_text="layer" if row == len(panels) else None, dtick=1 if panel["layer"].max() <= 32 else None, row=row, col=1
        )
    n_layers = int(df["layer"].max() + 1) if len(df) else 1
    _layout(fig, title, subtitle, max(600, 36 * n_layers + 300), max(360, 110 + 260 * len(panels)))
    return fig


def _rgba(hex_colour: str, alpha: float) -> str:
    """``#rrggbb`` as ``rgba(r, g, b, alpha)``.

    Returns:
        The CSS colour string.

    >>> _rgba("#636EFA", 0.5)
    'rgba(99, 110, 250, 0.5)'
    """
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r}, {g}, {b}, {alpha})"


def difference_heatmap(
    df: pd.DataFrame, *, value: str = "accuracy", title: str = "Accuracy Difference", subtitle: str = "", **options: Any
) -> go.Figure:
    """Heatmap of a signed grid (a difference, or selectivity), red below zero and blue above; ``options`` as :func:`heatmap`.

    Returns:
        The figure, not shown, its colour scale symmetric about zero at the largest absolute ``value``.
    """
    bound = float(df[value].abs().max()) if len(df) else 1.0
    bound = 1.0 if not math.isfinite(bound) or bound == 0 else bound
    return heatmap(df, value=value, title=title, subtitle=subtitle, zmin=-bound, zmax=bound, colorscale="RdBu", **options)


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

    Returns:
        The encoded image.

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
