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
from lens_digits.errors import LensDigitsError, RunDirectoryError
from lens_digits.plotting import difference_heatmap, heatmap
from lens_digits.record import RUN_FORMAT, RUN_SCHEMA, RunRecord
from lens_digits.rundir import RUN_FILES, Reservation, check_output, write_run_directory
from lens_digits.runfiles import CONTRACT_COLUMNS, read_grid_csv, read_prompts, read_run_json
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


def _rows(method: str, target: str, scores: Scores, scales: torch.Tensor, extra: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    correct = scores.correct.float().cpu()
    metrics = {k: v.float().cpu() for k, v in scores.metrics.items()}
    applies = torch.ones_like(scales, dtype=torch.bool) if scores.applies is None else scores.applies.cpu()
    for scale in sorted(set(scales.tolist())):
        sel = (scales == scale) & applies
        n = int(sel.sum())
        if n == 0:
            continue
        acc = correct[sel].mean(0)
        means = {k: v[sel].mean(0) for k, v in metrics.items()}
        for layer in range(correct.shape[1]):
            k = float(correct[sel, layer].sum())
            lo, hi = wilson_interval(k, n)
            row = {"method": method, "target": target, "scale": int(scale), "layer": layer}
            row |= {"accuracy": float(acc[layer]), "n": n, "ci_low": lo, "ci_high": hi}
            row |= extra | {k: float(v[layer]) for k, v in means.items()}
            rows.append(row)
    for column, labelled in scores.breakdown.items():
        for label, sub in labelled.items():
            rows += _rows(method, target, sub, scales, extra | {column: label})
    return rows


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

    def __init__(self, table: pd.DataFrame, problems: Sequence[Problem] = (), info: dict[str, Any] | None = None) -> None:
        """Wrap a tidy table; ``problems`` and ``info`` go to ``prompts.jsonl`` and ``run.json``."""
        missing = [c for c in CONTRACT_COLUMNS if c not in table.columns]
        if missing:
            raise LensDigitsError(f"a grid table needs columns {CONTRACT_COLUMNS}; missing {missing}")
        self.table = _rounded(table.reset_index(drop=True))
        self.problems = list(problems)
        self.info = dict(info or {})

    @classmethod
    def from_scores(
        cls,
        results: Sequence[tuple[str, str, Scores]],
        scored: Sequence[Problem],
        problems: Sequence[Problem] = (),
        info: dict[str, Any] | None = None,
    ) -> "AccuracyGrid":
        """Aggregate per-problem scores of the ``scored`` problems into cells."""
        scales = torch.tensor([p.scale for p in scored])
        rows = [r for method, target, s in results for r in _rows(method, target, s, scales, {})]
        table = pd.DataFrame(rows)
        breakdown = [c for s in results for c in s[2].breakdown]
        for column in dict.fromkeys(breakdown):
            table[column] = table[column].fillna("all")
        return cls(table, problems, info)

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
        """One panel as a scale x layer DataFrame (defaults: the first method and target)."""
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

    def _methods_target(self, method: str) -> list[str]:
        return list(dict.fromkeys(self.table.loc[self.table["method"] == method, "target"]))

    # ---- figures and text ----------------------------------------------------

    def figure(self, value: str = "accuracy", **breakdown: str) -> go.Figure:
        """The "Accuracy Breakdown" heatmap, one panel per method and target.

        Keyword arguments pick breakdown rows, e.g. ``figure(place="units")``.
        ``value`` picks the column to colour (``accuracy``; for probes also
        ``control``, ``chance`` or ``selectivity``). A difference grid and
        selectivity are drawn on a diverging scale.
        """
        df = self.main() if not breakdown else self.table
        for column, label in breakdown.items():
            if column not in df.columns:
                raise LensDigitsError(f"this grid has no {column!r} column; breakdown columns: {self.breakdown_columns}")
            df = df[df[column] == label]
        if value not in df.columns:
            raise LensDigitsError(f"this grid has no {value!r} column; columns: {list(df.columns)}")
        df = df[df[value].notna()]  # e.g. selectivity exists for probes only
        if df.empty:
            raise LensDigitsError(f"no cells with {value!r} match {breakdown or 'the grid'}")
        if all(" - " in m for m in df["method"]):
            return difference_heatmap(df)
        if value == "selectivity":
            return difference_heatmap(df, value=value, title="Selectivity (accuracy - control)")
        return heatmap(df, value=value)

    def to_text(self, value: str = "accuracy") -> str:
        """Small text tables, one per method and target (what the CLI prints)."""
        out = []
        for method in self.methods:
            for target in self._methods_target(method):
                p = self.pivot(method, target, value)
                p.index.name = "scale"
                out.append(f"{method} · target={target} · {value} (rows: digit scale, columns: layer)")
                out.append(p.to_string(float_format=lambda x: f"{x:.2f}"))
        return "\n".join(out)

    def __repr__(self) -> str:
        """Short description."""
        scales = sorted(self.table["scale"].unique().tolist())
        n_layers = int(self.table["layer"].max()) + 1 if len(self.table) else 0
        return f"AccuracyGrid(methods={self.methods}, targets={self.targets}, scales={scales}, layers=0..{n_layers - 1})"

    # ---- run directory ---------------------------------------------------------

    def save(self, path: str | os.PathLike[str], overwrite: bool = False, *, reservation: "Reservation | None" = None) -> Path:
        """Write the run directory (``grid.csv``, ``prompts.jsonl``, ``heatmap.html``, ``run.json``).

        The files are written to a temporary folder beside ``path``, flushed to
        disk and moved into place in one atomic step, so a failure or an
        interrupt leaves nothing half-written. ``overwrite`` replaces only a run
        directory this package wrote (see :mod:`lens_digits.rundir`); a
        ``reservation`` taken before a long computation is used if given.
        """

        def fill(tmp: Path) -> None:
            self.table.to_csv(tmp / "grid.csv", index=False)
            with open(tmp / "prompts.jsonl", "w") as f:
                for p in self.problems:
                    f.write(json.dumps(p.to_dict()) + "\n")
            self.figure().write_html(tmp / "heatmap.html", include_plotlyjs=True, full_html=True)
            info = self.info | {"format": RUN_FORMAT, "schema": RUN_SCHEMA}
            (tmp / "run.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")

        return write_run_directory(path, fill, overwrite, reservation)

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
        return cls(table, problems, RunRecord.from_dict(info, str(path / "run.json")).to_dict())

    @property
    def record(self) -> RunRecord:
        """``info`` as a :class:`~lens_digits.record.RunRecord` (what ``run.json`` holds)."""
        return RunRecord.from_dict(self.info)


def check_output_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Check that a run directory can be written at ``path``, creating nothing (see :func:`lens_digits.rundir.check_output`)."""
    return check_output(path, overwrite)
