"""A grid as text: the caption every table and figure carries, and the tables ``lens-digits`` prints."""

from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from lens_digits.results.grid import AccuracyGrid


def caption(model_name: str, info: dict[str, Any], df: pd.DataFrame, value: str, breakdown: dict[str, str]) -> str:
    """What a figure or table shows: model, methods, targets, breakdown and test problems per scale.

    Returns:
        The caption: its parts on one line, separated by middle dots.
    """
    parts = [model_name] if model_name else []
    if not all(" - " in str(m) for m in df["method"]):  # a difference's methods are in its title already
        parts.append(", ".join(dict.fromkeys(df["method"])))
    parts.append("target " + ", ".join(dict.fromkeys(df["target"])))
    parts += [f"{k} {v}" for k, v in breakdown.items() if k != "target"]
    norm = (info.get("sweep") or {}).get("norm", "final")
    if any("lens" in str(m) for m in df["method"]):
        parts.append(f"lens norm {norm}")
    if value != "accuracy":
        parts.append(value)
    n = df.groupby("scale")["n"].max()
    parts.append(f"n = {int(n.min())}" + ("" if n.min() == n.max() else f"-{int(n.max())}") + " test problems per scale")
    return " · ".join(p for p in parts if p)


def tables(grid: "AccuracyGrid", value: str = "accuracy") -> str:
    """Text tables, one per method and target (what the CLI prints).

    Each names what it shows; each row has its ``n`` (test problems), the widest 95% interval of the row (``±``, half
    its width) and the row's baseline: for a lens, always answering the train problems' most common answer; for a
    probe, chance (the train majority label).

    Returns:
        The tables, each under its caption, as one string.
    """
    out: list[str] = []
    legends: set[str] = set()
    for method in grid.methods:
        for target in grid._methods_target(method):
            df = grid._panel(method, target)
            table = df.pivot(index="scale", columns="layer", values=value)
            table.columns = [str(c) for c in table.columns]
            by_scale = df.groupby("scale")
            table["n"] = by_scale["n"].max().astype(int)
            if {"ci_low", "ci_high"} <= set(df.columns) and value == "accuracy":
                half = ((df["ci_high"] - df["ci_low"]) / 2).groupby(df["scale"]).max()
                table["±95%"] = half.map(lambda x: f"±{x:.2f}")
            for base in ("baseline", "chance"):
                if base in df.columns and df[base].notna().any():
                    table[base] = by_scale[base].mean()
            table.index.name = "scale"
            shown = caption(grid.model_name, grid.info, df, value, {})
            if " - " in str(method):  # a difference: the caption leaves its methods to a figure's title, a table has none
                shown = f"{method} · {shown}"
            out.append(f"{shown} · {value} by digit scale (rows) and layer (columns)")
            out.append(table.to_string(float_format=lambda x: f"{x:.2f}"))
            legends |= {base for base in ("baseline", "chance") if base in table.columns}
    if legends:
        out.append(
            "n: test problems per scale; ±95%: half the widest 95% interval of the row"
            + ("; baseline: a lens that always answers the train problems' most common answer" if "baseline" in legends else "")
            + ("; chance: a probe that always answers the train problems' most common label" if "chance" in legends else "")
        )
    return "\n".join(out)
