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


def is_intervention(method: str) -> bool:
    """Whether ``method``'s cells are flip rates (its class's ``accuracy_means``), not read accuracies.

    Returns:
        True for ``patch``, ``patch_operands`` and any registered :class:`~lens_digits.methods.base.Intervention` that
        keeps the default ``accuracy_means = "flip rate"`` (not the helix probe, whose cells are decoding accuracies).
    """
    from lens_digits.methods import accuracy_means

    return accuracy_means(method) == "flip rate"


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


def _layout(fig: go.Figure, title: str, subtitle: str, width: int, height: int, legend: bool = False, panels: bool = False) -> None:
    """Title, subtitle wrapped to the figure's width, a top margin that fits them, and room for a legend at the bottom.

    ``panels``: the figure has panel titles, so the margin also keeps the subtitle clear of the first one.
    """
    lines = wrap(subtitle, width=max(40, width // 7)) if subtitle else ""
    n_lines = lines.count("<br>") + 1 if lines else 0
    fig.update_layout(
        template="plotly_white",
        title={"text": title, "subtitle": {"text": lines}} if lines else title,
        height=height + 18 * max(0, n_lines - 1),
        width=width,
        margin={"t": 80 + 20 * n_lines + (30 if panels else 0), "b": 100 if legend else 60},
    )


def _grid_of_panels(n: int, faceted: bool) -> tuple[int, int]:
    """Rows and columns of panels: a column per facet label, else two columns once there are more than two panels.

    Returns:
        ``(rows, columns)`` for ``n`` panels (faceted: one row per panel).
    """
    if faceted or n <= 2:
        return n, 1
    return (n + 1) // 2, 2


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
    label: str | None = None,
    panel_notes: dict[str, str] | None = None,
) -> go.Figure:
    """Heatmap of a tidy grid: x ``layer``, y ``Digit Scale``, colour ``value``.

    One panel per (method, target) in the table, sharing one colour bar (more
    than two panels sit in two columns); with ``facet`` (a breakdown column
    such as ``place`` or ``carries``), one row per (method, target) and one
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
        text: Write each cell's value in it (emergence layers are then outlined, so that no marker covers a number).
        emergence: Emergence rows (see :mod:`lens_digits.results.emergence`) matching
            ``df``'s cells: each threshold's first layer is marked on its scale's row.
        label: What the colour bar says (default: ``value``).
        panel_notes: Words after a method's panel title (``{"patch": "flip rate"}``).

    Returns:
        The figure, not shown.
    """
    panels = _panels(df)
    labels = list(dict.fromkeys(df[facet])) if facet else [None]
    faceted = facet is not None
    notes = panel_notes or {}
    n_rows, n_cols = _grid_of_panels(len(panels), faceted)
    if faceted:
        n_cols = len(labels)
    titles = [f"{m} · target={t}" + (f" ({notes[m]})" if m in notes else "") for m, t in panels]
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        shared_xaxes=True,
        vertical_spacing=0.2 / max(1, n_rows),
        horizontal_spacing=(0.06 / max(1, n_cols - 1)) if faceted else (0.08 if n_cols > 1 else 0.0),
        # faceted: a title per column (the label) and per row (method and target, on the right); else one per panel
        subplot_titles=titles if len(panels) > 1 and not faceted else None,
        column_titles=[f"{facet} {lab}" for lab in labels] if faceted else None,
        row_titles=titles if faceted and len(panels) > 1 else None,
    )
    scales = [str(int(s)) for s in sorted(df["scale"].unique())]
    thresholds = sorted(emergence["threshold"].unique()) if emergence is not None and len(emergence) else []
    shown: set[float] = set()
    top = float(df["layer"].max()) if len(df) else 0.0
    for index, (method, target) in enumerate(panels):
        for j, lab in enumerate(labels):
            row, col = (index + 1, j + 1) if faceted else (index // n_cols + 1, index % n_cols + 1)
            cell = df[(df["method"] == method) & (df["target"] == target)]
            if facet:
                cell = cell[cell[facet] == lab]
            if cell.empty:
                fig.update_xaxes(visible=False, row=row, col=col)  # an empty facet: no grid, no axes
                fig.update_yaxes(visible=False, row=row, col=col)
                continue
            # every panel has a row for every scale (NaN where it has no cells), so that panels line up
            z = cell.pivot(index="scale", columns="layer", values=value).reindex([int(x) for x in scales])
            fig.add_trace(_heatmap_trace(cell, z, value, f"{method} · {target}" + (f" · {lab}" if facet else ""), text), row=row, col=col)
            for k, t in enumerate(thresholds):
                assert emergence is not None
                e = emergence[(emergence["method"] == method) & (emergence["target"] == target) & (emergence["threshold"] == t)]
                if facet and facet in e.columns:
                    e = e[e[facet] == lab]
                e = e[e["layer"].notna() & e["scale"].isin(z.index)]
                if e.empty:  # an empty trace with empty customdata breaks plotly.js's static export
                    continue
                name = f"first layer with {label or value} ≥ {t:g}"
                if text:
                    _outline(fig, e, scales, k, name, t not in shown, row, col)
                else:
                    _marker(fig, e, k, len(thresholds), name, t not in shown, row, col)
                shown.add(t)
            fig.update_yaxes(title_text="Digit Scale" if col == 1 else None, type="category", row=row, col=col)
            last = row == n_rows or (not faceted and index + n_cols >= len(panels))  # the bottom panel of its column
            fig.update_xaxes(
                title_text="layer" if last else None,
                dtick=1 if top <= 32 else None,
                range=[-0.5, top + 0.5],  # the cells alone: a marker at a cell's edge does not widen it
                row=row,
                col=col,
            )
    fig.update_layout(
        coloraxis={"colorscale": colorscale, "cmin": zmin, "cmax": zmax, "colorbar": {"title": {"text": label or value}}},
        legend={"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.0, "x": 0},
    )
    n_layers = int(top + 1)
    width = max(560, n_cols * (36 * n_layers + 60) + 220) if faceted else max(560, n_cols * (30 * n_layers + 80) + 200)
    _layout(fig, title, subtitle, width, max(340, 110 + 230 * n_rows) + (40 if shown else 0), legend=bool(shown), panels=len(panels) > 1)
    return fig


def _marker(fig: go.Figure, e: pd.DataFrame, k: int, n_thresholds: int, name: str, legend: bool, row: int, col: int) -> None:
    """Mark each scale's first layer reaching a threshold with an open symbol, side by side with the other thresholds'."""
    shift = (k - (n_thresholds - 1) / 2) * 0.26
    fig.add_trace(
        go.Scatter(
            x=(e["layer"].astype(int) + shift).tolist(),
            y=[str(int(s)) for s in e["scale"]],
            mode="markers",
            marker={"symbol": MARKERS.get(k, "x-open"), "size": 14, "color": MARKER_COLOUR, "line": {"width": 2.5}},
            name=name,
            legendgroup=name,
            showlegend=legend,
            customdata=e[["layer", "ci_low", "ci_high"]].to_numpy(dtype=float),
            hovertemplate=name + ": %{customdata[0]}<br>95% interval %{customdata[1]} to %{customdata[2]}<extra></extra>",
        ),
        row=row,
        col=col,
    )


def _outline(fig: go.Figure, e: pd.DataFrame, scales: list[str], k: int, name: str, legend: bool, row: int, col: int) -> None:
    """Outline each scale's first cell reaching a threshold (the cells hold numbers: a marker would cover one)."""
    dash = ("solid", "dot", "dash", "dashdot")[k % 4]
    inset = 0.06 * k  # thresholds met in the same cell stay apart
    for layer, scale in zip(e["layer"].astype(int), e["scale"].astype(int), strict=True):
        y = scales.index(str(scale))
        fig.add_shape(
            type="rect",
            x0=layer - 0.5 + inset,
            x1=layer + 0.5 - inset,
            y0=y - 0.5 + inset,
            y1=y + 0.5 - inset,
            line={"color": MARKER_COLOUR, "width": 2.5, "dash": dash},
            row=row,
            col=col,
        )
    fig.add_trace(  # the legend entry of the outlines
        go.Scatter(x=[None], y=[None], mode="lines", line={"color": MARKER_COLOUR, "dash": dash}, name=name, showlegend=legend),
        row=row,
        col=col,
    )


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
    _layout(fig, title, subtitle, max(600, 36 * n_layers + 300), max(360, 110 + 260 * len(panels)), panels=len(panels) > 1)
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


def static_image(fig: go.Figure, *, format: str = "png", scale: float = 2.0, **options: Any) -> bytes:
    """The figure as a static image (PNG by default), rendered by kaleido.

    For places that cannot run plotly.js, such as a notebook shown on GitHub.
    Needs ``kaleido>=1`` (not a dependency of this package) and a Chrome or
    Chromium that kaleido finds (or the ``BROWSER_PATH`` environment variable
    names); a notebook can catch the error and go on without the image.

    Args:
        fig: The figure.
        format: ``png``, ``jpeg``, ``webp``, ``svg`` or ``pdf``.
        scale: Pixels per layout pixel (2, as ``lens-digits plot --png`` writes them).
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
