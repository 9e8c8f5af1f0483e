"""AccuracyGrid: digit scale x layer accuracy, as a tidy table, a run directory and a figure.

The table has one row per cell: ``method, target, scale, layer, accuracy, n,
ci_low, ci_high`` (a 95% Wilson interval), then any breakdown columns (such as
``place``, ``"all"`` on the main rows) and the decoders' metric columns.

A run directory holds ``grid.csv``, ``prompts.jsonl``, ``heatmap.html`` and
``run.json``; :mod:`lens_digits.rundir` writes it whole or not at all.
"""

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch

from lens_digits.decoders.base import Scores
from lens_digits.emergence import EMERGENCE_COLUMNS, N_BOOT, THRESHOLDS, Bootstrap, check_thresholds
from lens_digits.errors import LensDigitsError, NonFiniteError, RunDirectoryError
from lens_digits.plotting import difference_heatmap, heatmap, lines
from lens_digits.record import RUN_FORMAT, RUN_SCHEMA, RunRecord
from lens_digits.rundir import RUN_FILES, Reservation, check_output, write_run_directory
from lens_digits.runfiles import CONTRACT_COLUMNS, KEY_COLUMNS, read_emergence_csv, read_grid_csv, read_prompts, read_run_json
from lens_digits.tasks import Problem

FILES = RUN_FILES


def wilson_interval(k: int | float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for ``k`` successes in ``n`` trials.

    >>> [round(x, 3) for x in wilson_interval(5, 10)]
    [0.237, 0.763]
    """
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _rows(
    method: str,
    target: str,
    scores: Scores,
    scales: torch.Tensor,
    extra: dict[str, str],
    emergence: "tuple[Bootstrap, tuple[float, ...], list[dict[str, Any]]] | None" = None,
) -> list[dict[str, Any]]:
    """Cells of one method and target (breakdown rows included); emergence rows go to ``emergence[2]``."""
    rows = []
    correct = scores.correct.float().cpu()
    metrics = {k: v.double().cpu() for k, v in scores.metrics.items()}
    applies = torch.ones_like(scales, dtype=torch.bool) if scores.applies is None else scores.applies.cpu()
    for scale in sorted(set(scales.tolist())):
        sel = (scales == scale) & applies
        n = int(sel.sum())
        if n == 0:
            continue
        acc = correct[sel].mean(0)
        means = {k: v[sel].nanmean(0) for k, v in metrics.items()}  # NaN: undefined for a problem (abs_error of a non-number)
        for name in ALWAYS_DEFINED:
            if name in metrics and not bool(torch.isfinite(metrics[name][sel]).all()):
                raise NonFiniteError(f"{method} (target {target}) scored a NaN or infinite {name} at digit scale {scale}; it is not saved")
        for layer in range(correct.shape[1]):
            k = float(correct[sel, layer].sum())
            lo, hi = wilson_interval(k, n)
            row = {"method": method, "target": target, "scale": int(scale), "layer": layer}
            row |= {"accuracy": float(acc[layer]), "n": n, "ci_low": lo, "ci_high": hi}
            row |= extra | {k: float(v[layer]) for k, v in means.items()}
            rows.append(row)
        if emergence is not None:
            boot, thresholds, out = emergence
            for e in boot.emergence(scores.correct.cpu()[sel], thresholds):
                out.append({"method": method, "target": target, "scale": int(scale)} | e | extra)
    for column, labelled in scores.breakdown.items():
        for label, sub in labelled.items():
            rows += _rows(method, target, sub, scales, extra | {column: label}, emergence)
    return rows


ALWAYS_DEFINED = ("gold_rank", "gold_prob")
"""Metrics defined for every problem and layer: a NaN there is an error, never a cell."""

ALL = "all"
"""The breakdown label of a row that covers every value of that breakdown."""


def fill_breakdown_labels(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Label ``ALL`` where a row has no label in a breakdown column, in place (and returned).

    ``columns`` None: every text column but ``method`` and ``target`` (tables put
    together from grids with different breakdowns).
    """
    if columns is None:
        columns = [c for c in frame.columns if c not in ("method", "target") and not pd.api.types.is_numeric_dtype(frame[c])]
    for c in columns:
        if c in frame.columns:
            frame[c] = frame[c].fillna(ALL)
    return frame


def _breakdown_columns(scores: Scores) -> list[str]:
    """Breakdown columns of ``scores`` and of its breakdown rows, nested ones included (``place``, then ``carry_in``)."""
    out = list(scores.breakdown)
    for labelled in scores.breakdown.values():
        for sub in labelled.values():
            out += _breakdown_columns(sub)
    return list(dict.fromkeys(out))


SIGNIFICANT_DIGITS = 6


def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    """Floats to 6 significant digits, so that float noise (batch size, threads) does not reach ``grid.csv``."""
    table = table.copy()
    for column in table.columns:
        if pd.api.types.is_float_dtype(table[column]):
            table[column] = table[column].map(lambda x: float(f"{x:.{SIGNIFICANT_DIGITS}g}") if math.isfinite(x) else x)
    return table


class AccuracyGrid:
    """Accuracy per digit scale and layer, for one or more decoders and targets.

    >>> import lens_digits as ld
    >>> grid = ld.run_sweep(ld.testing.tiny_model(), scales=[1, 2], n_per_scale=20, target="first")
    >>> sorted(grid.to_dataframe()["layer"].unique().tolist())
    [0, 1, 2]
    """

    def __init__(
        self,
        table: pd.DataFrame,
        problems: Sequence[Problem] = (),
        info: dict[str, Any] | None = None,
        *,
        emergence: pd.DataFrame | None = None,
    ) -> None:
        """Wrap a tidy table; ``problems`` and ``info`` go to ``prompts.jsonl`` and ``run.json``, ``emergence`` to ``emergence.csv``."""
        missing = [c for c in CONTRACT_COLUMNS if c not in table.columns]
        if missing:
            raise LensDigitsError(f"a grid table needs columns {CONTRACT_COLUMNS}; missing {missing}")
        self.table = _rounded(table.reset_index(drop=True))
        self.problems = list(problems)
        self.info = dict(info or {})
        self.emergence = _rounded(emergence.reset_index(drop=True)) if emergence is not None else pd.DataFrame(columns=EMERGENCE_COLUMNS)
        """Emergence layers (see :mod:`lens_digits.emergence`): one row per cell and threshold; empty for derived grids."""

    @classmethod
    def from_scores(
        cls,
        results: Sequence[tuple[str, str, Scores]],
        scored: Sequence[Problem],
        problems: Sequence[Problem] = (),
        info: dict[str, Any] | None = None,
        *,
        thresholds: Sequence[float] = THRESHOLDS,
        n_boot: int = N_BOOT,
        seed: int = 0,
    ) -> "AccuracyGrid":
        """Aggregate per-problem scores of the ``scored`` problems into cells, and find the emergence layers.

        ``thresholds``, ``n_boot`` and ``seed`` set the emergence layers (see
        :mod:`lens_digits.emergence`); empty ``thresholds``: none.
        """
        scales = torch.tensor([p.scale for p in scored])
        found: list[dict[str, Any]] = []
        boot = (Bootstrap(n_boot, seed), check_thresholds(thresholds), found) if len(thresholds) else None
        rows = [r for method, target, s in results for r in _rows(method, target, s, scales, {}, boot)]
        table = pd.DataFrame(rows)
        emergence = pd.DataFrame(found, columns=EMERGENCE_COLUMNS) if not found else pd.DataFrame(found)
        columns = list(dict.fromkeys(c for _, _, s in results for c in _breakdown_columns(s)))
        fill_breakdown_labels(table, columns)
        fill_breakdown_labels(emergence, columns)
        return cls(table, problems, info, emergence=emergence)

    # ---- data ----------------------------------------------------------------

    @property
    def breakdown_columns(self) -> list[str]:
        """Columns that split a cell into finer rows (``place``)."""
        known = set(CONTRACT_COLUMNS) | {"ci_low", "ci_high"}
        return [c for c in self.table.columns if c not in known and not pd.api.types.is_numeric_dtype(self.table[c])]

    def to_dataframe(self, breakdown: bool = True) -> pd.DataFrame:
        """The tidy table (a copy). ``breakdown=False`` keeps only the main (``all``) rows."""
        return (self.table if breakdown else self.main()).copy()

    def main(self) -> pd.DataFrame:
        """Rows of whole cells, without breakdown rows."""
        keep = pd.Series(True, index=self.table.index)
        for c in self.breakdown_columns:
            keep &= self.table[c] == "all"
        return self.table[keep]

    @property
    def methods(self) -> list[str]:
        """Methods in the grid, in order."""
        return list(dict.fromkeys(self.table["method"]))

    @property
    def targets(self) -> list[str]:
        """Targets in the grid, in order."""
        return list(dict.fromkeys(self.table["target"]))

    def pivot(self, method: str | None = None, target: str | None = None, value: str = "accuracy") -> pd.DataFrame:
        """One panel as a scale x layer DataFrame; name the method and target when the grid has several."""
        for name, given, present in (("method", method, self.methods), ("target", target, self.targets)):
            if given is None and len(present) > 1:
                raise LensDigitsError(f"this grid has {len(present)} {name}s {present}: say which, e.g. pivot({name}={present[0]!r})")
        df = self._panel(method, target)
        return df.pivot(index="scale", columns="layer", values=value)

    def _panel(self, method: str | None, target: str | None) -> pd.DataFrame:
        method = method or self.methods[0]
        target = target or self.targets[0]
        df = self.main()
        df = df[(df["method"] == method) & (df["target"] == target)]
        if df.empty:
            raise LensDigitsError(f"no cells for method={method!r}, target={target!r}; the grid has {self.methods} x {self.targets}")
        return df

    def difference(self, a: str, b: str, target: str | None = None) -> "AccuracyGrid":
        """Cell-by-cell ``a - b`` (for example ``probe - logit_lens``), on the same test problems."""
        targets = [target] if target else [t for t in self.targets if t in set(self._methods_target(a)) & set(self._methods_target(b))]
        frames = []
        for t in targets:
            pa = self._panel(a, t).set_index(["scale", "layer"])
            pb = self._panel(b, t).set_index(["scale", "layer"])
            diff = (pa["accuracy"] - pb["accuracy"]).rename("accuracy").reset_index()
            diff["n"] = pa["n"].to_numpy()
            diff["method"] = f"{a} - {b}"
            diff["target"] = t
            frames.append(diff[CONTRACT_COLUMNS])
        if not frames:
            raise LensDigitsError(f"methods {a!r} and {b!r} share no target in this grid")
        return AccuracyGrid(pd.concat(frames, ignore_index=True), self.problems, self.info)

    def compare(self, other: "AccuracyGrid", labels: tuple[str, str] = ("A", "B")) -> "AccuracyGrid":
        """Cell-by-cell ``self - other`` over the cells both grids have (two models, two templates, ...).

        Cells are matched on method, target, scale, layer and breakdown labels;
        the result's methods read ``"A:logit_lens - B:logit_lens"`` with ``labels``
        naming the two runs. Its ``n`` is the smaller of the two cells' ``n``.

        Raises:
            LensDigitsError: The grids share no cell.
        """
        keys = KEY_COLUMNS + [c for c in self.breakdown_columns if c in other.breakdown_columns]
        a = self.table[keys + ["accuracy", "n"]]
        b = other.table[keys + ["accuracy", "n"]]
        both = a.merge(b, on=keys, suffixes=("_a", "_b"))
        if both.empty:
            raise LensDigitsError("the two grids share no cell (method, target, digit scale and layer); compare runs of the same methods")
        diff = both[keys].copy()
        diff["accuracy"] = both["accuracy_a"] - both["accuracy_b"]
        diff["n"] = both[["n_a", "n_b"]].min(axis=1).astype(int)
        diff["method"] = [f"{labels[0]}:{m} - {labels[1]}:{m}" for m in both["method"]]
        info = {
            "compare": {labels[0]: self.info.get("command") or self.model_name, labels[1]: other.info.get("command") or other.model_name}
        }
        return AccuracyGrid(diff[CONTRACT_COLUMNS + keys[4:]], (), info)

    def _methods_target(self, method: str) -> list[str]:
        return list(dict.fromkeys(self.table.loc[self.table["method"] == method, "target"]))

    # ---- figures and text ----------------------------------------------------

    @property
    def model_name(self) -> str:
        """Short name of the model the grid was made with (a folder's last part), from ``run.json``."""
        name = str((self.info.get("model") or {}).get("name", "") or "")
        return Path(name).name if "/" in name and Path(name).is_absolute() else name

    def _caption(self, df: pd.DataFrame, value: str, breakdown: dict[str, str]) -> str:
        """What a figure or table shows: model, methods, targets, breakdown and test problems per scale."""
        parts = [self.model_name] if self.model_name else []
        parts.append(", ".join(dict.fromkeys(df["method"])))
        parts.append("target " + ", ".join(dict.fromkeys(df["target"])))
        parts += [f"{k} {v}" for k, v in breakdown.items() if k != "target"]
        norm = (self.info.get("sweep") or {}).get("norm", "final")
        if any("lens" in str(m) for m in df["method"]):
            parts.append(f"lens norm {norm}")
        if value != "accuracy":
            parts.append(value)
        n = df.groupby("scale")["n"].max()
        parts.append(f"n = {int(n.min())}" + ("" if n.min() == n.max() else f"-{int(n.max())}") + " test problems per scale")
        return " · ".join(p for p in parts if p)

    def figure(
        self,
        value: str = "accuracy",
        *,
        kind: str = "heatmap",
        facet: str | None = None,
        text: bool = False,
        colorscale: str = "Viridis",
        markers: bool = True,
        **breakdown: str,
    ) -> go.Figure:
        """The "Accuracy Breakdown" figure: a heatmap, one panel per method and target (or a line plot).

        Keyword arguments pick breakdown rows, e.g. ``figure(place="units")``.
        The title names the model, methods, targets, breakdown and the test
        problems per scale; hovering a cell shows its value, ``n``, 95% interval
        and baseline (chance for probes).

        Args:
            value: The column to draw (``accuracy``; for lenses also ``gold_prob``,
                ``within_10``, ...; for probes ``control``, ``chance`` or
                ``selectivity``). A difference grid and selectivity are drawn on a
                diverging scale.
            kind: ``heatmap``, or ``lines``: value against layer, one line per
                digit scale with its 95% band (what papers print).
            facet: A breakdown column (``place``, ``carries``, ``seed``, ...) whose
                labels get a column of panels each.
            text: Write each cell's value in it.
            colorscale: The heatmap's colour scale (``Viridis``, ``Blues``, ...).
            markers: Mark each scale's emergence layers (the first layer reaching
                each threshold; see :attr:`emergence`) on the heatmap.
            **breakdown: Breakdown rows to draw, as ``column=label``.
        """
        if kind not in ("heatmap", "lines"):
            raise LensDigitsError(f"unknown figure kind {kind!r}; choose heatmap or lines")
        df = self.table
        for column, label in breakdown.items():
            if column not in df.columns:
                raise LensDigitsError(f"this grid has no {column!r} column; breakdown columns: {self.breakdown_columns}")
            df = df[df[column] == label]
        if facet is not None:
            if facet not in self.breakdown_columns:
                raise LensDigitsError(f"cannot facet by {facet!r}: breakdown columns are {self.breakdown_columns}")
            if facet in breakdown:
                raise LensDigitsError(f"{facet!r} is both the facet and a chosen breakdown row; give one")
            df = df[df[facet] != "all"]
        fixed = {c: "all" for c in self.breakdown_columns if c not in breakdown and c != facet}
        for column, label in fixed.items():
            df = df[df[column] == label]
        if value not in df.columns:
            raise LensDigitsError(f"this grid has no {value!r} column; columns: {list(df.columns)}")
        df = df[df[value].notna()]  # e.g. selectivity exists for probes only
        if df.empty:
            raise LensDigitsError(f"no cells with {value!r} match {breakdown or 'the grid'}" + (f" faceted by {facet!r}" if facet else ""))
        caption = self._caption(df, value, breakdown)
        if kind == "lines":
            return lines(df, value=value, subtitle=caption)
        emergence = None
        if markers and value == "accuracy" and not self.emergence.empty:
            emergence = self.emergence
            for column, label in (fixed | breakdown).items():
                if column in emergence.columns:
                    emergence = emergence[emergence[column] == label]
        options: dict[str, Any] = {"subtitle": caption, "facet": facet, "text": text, "emergence": emergence}
        if all(" - " in m for m in df["method"]):
            pairs = ", ".join(m.replace(" - ", " minus ") for m in dict.fromkeys(df["method"]))
            return difference_heatmap(df, title=f"Accuracy Difference: {pairs}", **options)
        if value == "selectivity":
            return difference_heatmap(df, value=value, title="Selectivity (accuracy minus control)", **options)
        return heatmap(df, value=value, colorscale=colorscale, **options)

    def to_text(self, value: str = "accuracy") -> str:
        """Text tables, one per method and target (what the CLI prints).

        Each names what it shows; each row has its ``n`` (test problems), the
        widest 95% interval of the row (``±``, half its width) and the row's
        baseline: for a lens, always answering the train problems' most common
        answer; for a probe, chance (the train majority label).
        """
        out = []
        for method in self.methods:
            for target in self._methods_target(method):
                df = self._panel(method, target)
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
                out.append(f"{self._caption(df, value, {})} · {value} by digit scale (rows) and layer (columns)")
                out.append(table.to_string(float_format=lambda x: f"{x:.2f}"))
        return "\n".join(out)

    def __str__(self) -> str:
        """The text tables (``print(grid)``)."""
        return self.to_text()

    def __repr__(self) -> str:
        """Short description."""
        scales = sorted(self.table["scale"].unique().tolist())
        n_layers = int(self.table["layer"].max()) + 1 if len(self.table) else 0
        return f"AccuracyGrid(methods={self.methods}, targets={self.targets}, scales={scales}, layers=0..{n_layers - 1})"

    # ---- run directory ---------------------------------------------------------

    def save(
        self,
        path: str | os.PathLike[str],
        overwrite: bool = False,
        *,
        reservation: "Reservation | None" = None,
        cache: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Write the run directory (``grid.csv``, ``emergence.csv``, ``prompts.jsonl``, ``heatmap.html``, ``run.json``).

        The files are written to a temporary folder beside ``path``, flushed to
        disk and moved into place in one atomic step, so a failure or an
        interrupt leaves nothing half-written. ``overwrite`` replaces only a run
        directory this package wrote (see :mod:`lens_digits.rundir`); a
        ``reservation`` taken before a long computation is used if given.
        ``cache``: a residual cache folder moved in as ``cache/`` (by a rename).
        """

        def fill(tmp: Path) -> None:
            self.table.to_csv(tmp / "grid.csv", index=False)
            if not self.emergence.empty:
                self.emergence.to_csv(tmp / "emergence.csv", index=False)
            with open(tmp / "prompts.jsonl", "w") as f:
                for p in self.problems:
                    f.write(json.dumps(p.to_dict()) + "\n")
            self.figure().write_html(tmp / "heatmap.html", include_plotlyjs=True, full_html=True)
            info = self.info | {"format": RUN_FORMAT, "schema": RUN_SCHEMA}
            (tmp / "run.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")

        return write_run_directory(path, fill, overwrite, reservation, carry=None if cache is None else Path(cache))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "AccuracyGrid":
        """Read a run directory written by :meth:`save`, checking every file.

        Raises:
            RunDirectoryError: A file is missing, damaged or edited into something
                this package would not write; the message names the file and line.
        """
        path = Path(path).expanduser()
        if not (path / "grid.csv").is_file():
            raise RunDirectoryError(f"{str(path)!r} is not a run directory: it has no grid.csv")
        table = read_grid_csv(path / "grid.csv")
        problems = read_prompts(path / "prompts.jsonl") if (path / "prompts.jsonl").is_file() else []
        info = read_run_json(path / "run.json") if (path / "run.json").is_file() else {}
        emergence = read_emergence_csv(path / "emergence.csv") if (path / "emergence.csv").is_file() else None
        return cls(table, problems, RunRecord.from_dict(info, str(path / "run.json")).to_dict(), emergence=emergence)

    @property
    def record(self) -> RunRecord:
        """``info`` as a :class:`~lens_digits.record.RunRecord` (what ``run.json`` holds)."""
        return RunRecord.from_dict(self.info)


def check_output_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Check that a run directory can be written at ``path``, creating nothing (see :func:`lens_digits.outputs.check_output`)."""
    return check_output(path, overwrite)
