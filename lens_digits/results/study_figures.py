"""Figures of a study: heatmaps faceted by task and model, and the emergence layer against model size."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from lens_digits.results.figures import TITLE, _layout


def _whole_cells(df: pd.DataFrame, method: str | None, target: str | None) -> tuple[pd.DataFrame, str, str]:
    """The rows of one method and target that are whole cells (every breakdown column ``all``).

    Returns:
        The rows, the method and the target (the table's first ones where ``method`` or ``target`` is not given).
    """
    method = method or str(df["method"].iloc[0])
    target = target or str(df.loc[df["method"] == method, "target"].iloc[0])
    keep = (df["method"] == method) & (df["target"] == target)
    for c in df.columns:
        if c not in ("method", "target", "model", "task") and not pd.api.types.is_numeric_dtype(df[c]):
            keep &= df[c] == "all"
    return df[keep], method, target


def study_heatmaps(table: pd.DataFrame, method: str | None = None, target: str | None = None) -> go.Figure:
    """Accuracy heatmaps of a study, one per task (rows) and model (columns), for one method and target.

    Returns:
        The figure, not shown.
    """
    df, method, target = _whole_cells(table, method, target)
    models, tasks = list(dict.fromkeys(df["model"])), list(dict.fromkeys(df["task"]))
    fig = make_subplots(
        rows=len(tasks),
        cols=len(models),
        subplot_titles=[f"{m} · {t}" for t in tasks for m in models],
        horizontal_spacing=0.1,
        vertical_spacing=0.12 if len(tasks) > 1 else 0.1,
    )
    for r, task in enumerate(tasks, start=1):
        for c, model in enumerate(models, start=1):
            cell = df[(df["model"] == model) & (df["task"] == task)]
            if cell.empty:
                continue
            z = cell.pivot(index="scale", columns="layer", values="accuracy")
            fig.add_trace(
                go.Heatmap(
                    z=z.values,
                    x=[str(x) for x in z.columns],
                    y=[f"{s}-digit" for s in z.index],
                    zmin=0,
                    zmax=1,
                    colorscale="Viridis",
                    showscale=(r, c) == (1, 1),
                    colorbar={"title": "accuracy"},
                    hovertemplate=f"{model} · {task}<br>scale %{{y}}, layer %{{x}}<br>accuracy %{{z:.3f}}<extra></extra>",
                ),
                row=r,
                col=c,
            )
    subtitle = f"study · {method} · target {target} · digit scale (rows) x layer (columns), by model and task"
    _layout(fig, TITLE, subtitle, 320 * len(models) + 120, 300 * len(tasks) + 140)
    return fig


def study_emergence(emergence: pd.DataFrame, threshold: float = 0.5, method: str | None = None, target: str | None = None) -> go.Figure:
    """The first layer reaching ``threshold``, as a share of each model's depth, against its parameter count.

    Returns:
        The figure, not shown: one line per task and digit scale.
    """
    df, method, target = _whole_cells(emergence, method, target)
    df = df[np.isclose(df["threshold"], threshold)].sort_values("n_params")
    fig = go.Figure()
    for i, ((task, scale), part) in enumerate(df.groupby(["task", "scale"], sort=False)):
        depth = part["layer"] / part["n_layers"]
        fig.add_trace(
            go.Scatter(
                x=part["n_params"],
                y=depth,
                mode="lines+markers",
                name=f"{task}, {scale}-digit",
                text=part["model"],
                line={"color": qualitative.Plotly[i % len(qualitative.Plotly)]},
                hovertemplate="%{text}: %{x:,} parameters<br>layer %{customdata} = %{y:.2f} of the depth<extra></extra>",
                customdata=part["layer"],
            )
        )
    fig.update_xaxes(type="log", title="parameters")
    fig.update_yaxes(title=f"first layer with accuracy >= {threshold:g} / n_layers", range=[0, 1.05])
    _layout(fig, "Emergence against model size", f"{method} · target {target} · never reached: no point", 760, 460, legend=True)
    return fig
