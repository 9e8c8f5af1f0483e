"""AccuracyGrid: digit scale x layer accuracy, as a tidy table, a run directory and a figure.

The table has one row per cell: ``method, target, scale, layer, accuracy, n, ci_low, ci_high`` (a 95% Wilson interval),
then any breakdown columns (such as ``place``, ``"all"`` on the main rows) and the decoders' metric columns.

A run directory holds ``grid.csv``, ``prompts.jsonl``, ``examples.jsonl``, ``report.html`` and ``run.json``
(:mod:`lens_digits.results.saving`); :mod:`lens_digits.storage.reservation` writes it whole or not at all.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import plotly.graph_objects as go
import torch

from lens_digits.errors import LensDigitsError, RunDirectoryError
from lens_digits.methods.scores import Scores
from lens_digits.problems.tasks import Problem
from lens_digits.results.cells import breakdown_columns, cell_rows, fill_breakdown_labels, rounded
from lens_digits.results.emergence import EMERGENCE_COLUMNS, N_BOOT, THRESHOLDS, Bootstrap, check_thresholds
from lens_digits.results.examples import EXAMPLES_FILE, example_records, read_examples
from lens_digits.results.figures import difference_heatmap, heatmap, lines
from lens_digits.results.files import CONTRACT_COLUMNS, KEY_COLUMNS, read_emergence_csv, read_grid_csv, read_prompts, read_run_json
from lens_digits.results.record import RunRecord
from lens_digits.results.text import caption, tables
from lens_digits.storage.paths import RUN_FILES, check_output
from lens_digits.storage.reservation import Reservation, write_run_directory

if TYPE_CHECKING:
    from lens_digits.results.page import Report

FILES = RUN_FILES


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
        examples: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Wrap a tidy table; ``problems`` and ``info`` go to ``prompts.jsonl`` and ``run.json``, ``emergence`` to ``emergence.csv``.

        ``examples``: example readings, as ``examples.jsonl`` holds them (:mod:`lens_digits.results.examples`).

        Raises:
            LensDigitsError: ``table`` lacks one of the columns ``method, target, scale, layer, accuracy, n``.
        """
        missing = [c for c in CONTRACT_COLUMNS if c not in table.columns]
        if missing:
            raise LensDigitsError(f"a grid table needs columns {CONTRACT_COLUMNS}; missing {missing}")
        self.table = rounded(table.reset_index(drop=True))
        self.problems = list(problems)
        self.info = dict(info or {})
        self.emergence = rounded(emergence.reset_index(drop=True)) if emergence is not None else pd.DataFrame(columns=EMERGENCE_COLUMNS)
        """Emergence layers (see :mod:`lens_digits.results.emergence`): one row per cell and threshold; empty for derived grids."""
        self.examples = list(examples)
        """What each method read for a sample of the test problems at every layer (``examples.jsonl``); empty for derived grids."""

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

        ``thresholds``, ``n_boot`` and ``seed`` set the emergence layers (:mod:`lens_digits.results.emergence`); empty ``thresholds``: none.

        Returns:
            The grid of those cells, with their emergence layers.
        """
        scales = torch.tensor([p.scale for p in scored])
        found: list[dict[str, Any]] = []
        boot = (Bootstrap(n_boot, seed), check_thresholds(thresholds), found) if len(thresholds) else None
        rows = [r for method, target, s in results for r in cell_rows(method, target, s, scales, {}, boot)]
        table = pd.DataFrame(rows)
        emergence = pd.DataFrame(found, columns=EMERGENCE_COLUMNS) if not found else pd.DataFrame(found)
        columns = list(dict.fromkeys(c for _, _, s in results for c in breakdown_columns(s)))
        fill_breakdown_labels(table, columns)
        fill_breakdown_labels(emergence, columns)
        return cls(table, problems, info, emergence=emergence, examples=example_records(results))

    # ---- data ----------------------------------------------------------------

    @property
    def breakdown_columns(self) -> list[str]:
        """Columns that split a cell into finer rows (``place``)."""
        known = set(CONTRACT_COLUMNS) | {"ci_low", "ci_high"}
        return [c for c in self.table.columns if c not in known and not pd.api.types.is_numeric_dtype(self.table[c])]

    def to_dataframe(self, breakdown: bool = True) -> pd.DataFrame:
        """The tidy table (a copy). ``breakdown=False`` keeps only the main (``all``) rows.

        Returns:
            A copy of the table, or of its main rows.
        """
        return (self.table if breakdown else self.main()).copy()

    def main(self) -> pd.DataFrame:
        """Rows of whole cells, without breakdown rows.

        Returns:
            The rows of the table whose every breakdown column reads ``all``.
        """
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
        """One panel as a scale x layer DataFrame; name the method and target when the grid has several.

        Returns:
            The ``value`` of each cell, with a row per digit scale and a column per layer.

        Raises:
            LensDigitsError: The grid has several methods or targets and none is named, or has no cell for the panel.
        """
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
        """Cell-by-cell ``a - b`` (for example ``probe - logit_lens``), on the same test problems.

        Returns:
            A grid of the differences, of method ``"a - b"``, per ``target`` (default: every target both methods have).

        Raises:
            LensDigitsError: The methods share no target, or one has no cell for ``target``.
        """
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

        Cells are matched on method, target, scale, layer and breakdown labels; the result's methods read
        ``"A:logit_lens - B:logit_lens"`` with ``labels`` naming the two runs. Its ``n`` is the smaller of the two cells' ``n``.

        Returns:
            The grid of the differences, with the two runs' commands (or model names) in ``info``.

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

        Keyword arguments pick breakdown rows, e.g. ``figure(place="units")``. The title names the model, methods, targets,
        breakdown and the test problems per scale; hovering a cell shows its value, ``n``, 95% interval and baseline (chance for probes).

        Args:
            value: The column to draw (``accuracy``; for lenses also ``gold_prob``, ``within_10``, ...; for probes ``control``,
                ``chance`` or ``selectivity``). A difference grid and selectivity are drawn on a diverging scale.
            kind: ``heatmap``, or ``lines``: value against layer, one line per digit scale with its 95% band (what papers print).
            facet: A breakdown column (``place``, ``carries``, ``seed``, ...) whose labels get a column of panels each.
            text: Write each cell's value in it.
            colorscale: The heatmap's colour scale (``Viridis``, ``Blues``, ...).
            markers: Mark each scale's emergence layers (the first layer reaching each threshold; see :attr:`emergence`) on the heatmap.
            **breakdown: Breakdown rows to draw, as ``column=label``.

        Returns:
            The plotly figure.

        Raises:
            LensDigitsError: ``kind`` is unknown, a named column is missing, ``facet`` is not an unpicked breakdown column, or no cell fits.
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
        subtitle = caption(self.model_name, self.info, df, value, breakdown)
        if kind == "lines":
            return lines(df, value=value, subtitle=subtitle)
        emergence = None
        if markers and value == "accuracy" and not self.emergence.empty:
            emergence = self.emergence
            for column, label in (fixed | breakdown).items():
                if column in emergence.columns:
                    emergence = emergence[emergence[column] == label]
        options: dict[str, Any] = {"subtitle": subtitle, "facet": facet, "text": text, "emergence": emergence}
        if all(" - " in m for m in df["method"]):
            pairs = ", ".join(m.replace(" - ", " minus ") for m in dict.fromkeys(df["method"]))
            return difference_heatmap(df, title=f"Accuracy Difference: {pairs}", label=f"{value} difference", **options)
        if value == "selectivity":
            return difference_heatmap(df, value=value, title="Selectivity (accuracy minus control)", label="selectivity", **options)
        from lens_digits.methods import accuracy_means, is_signed  # the package: its built-in methods registered
        methods = list(dict.fromkeys(df["method"]))
        if any(is_signed(m, value) for m in methods):  # a logit difference, an estimated effect: blue above zero, red below
            name = value.replace("_", " ")
            return difference_heatmap(df, value=value, title=f"{name[:1].upper() + name[1:]} Breakdown", label=name, **options)
        notes = {m: accuracy_means(m) for m in methods if accuracy_means(m) != "accuracy"}
        if value == "accuracy" and notes:  # an intervention's accuracy is the share of flipped answers, ...
            meanings = list(dict.fromkeys(notes.values()))
            if len(notes) == len(methods) and len(meanings) == 1:
                title = f"{meanings[0].title()} Breakdown"
                return heatmap(df, value=value, colorscale=colorscale, title=title, label=meanings[0], **options)
            label = " / ".join((["accuracy"] if len(notes) < len(methods) else []) + meanings)
            return heatmap(df, value=value, colorscale=colorscale, label=label, panel_notes=notes, **options)
        return heatmap(df, value=value, colorscale=colorscale, **options)

    def to_text(self, value: str = "accuracy") -> str:
        """Text tables, one per method and target (what the CLI prints; see :func:`~lens_digits.results.text.tables`).

        Returns:
            The tables, each under its caption, as one string.
        """
        return tables(self, value)

    __str__ = to_text  # print(grid): the text tables

    def __repr__(self) -> str:
        """Short description.

        Returns:
            The grid's methods, targets, scales and layers, as ``AccuracyGrid(...)``.
        """
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
        """Write the run directory (``grid.csv``, ``emergence.csv``, ``prompts.jsonl``, ``examples.jsonl``, ``report.html``, ``run.json``).

        The files are written to a temporary folder beside ``path``, flushed to disk and moved into place in one atomic
        step, so a failure or an interrupt leaves nothing half-written. ``overwrite`` replaces only a run directory this
        package wrote (see :mod:`lens_digits.storage.reservation`); a ``reservation`` taken before a long computation is
        used if given. ``cache``: a residual cache folder moved in as ``cache/`` (by a rename).

        Returns:
            The absolute path of the run directory written.
        """
        from lens_digits.results.saving import write_run_files

        carry = None if cache is None else Path(cache)
        return write_run_directory(path, lambda tmp: write_run_files(self, tmp), overwrite, reservation, carry=carry)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "AccuracyGrid":
        """Read a run directory written by :meth:`save`, checking every file.

        Returns:
            The grid, with its problems, run record, emergence layers and example readings.

        Raises:
            RunDirectoryError: A file is missing, damaged or not what this package writes; the message names the file and line.
        """
        path = Path(path).expanduser()
        if not (path / "grid.csv").is_file():
            raise RunDirectoryError(f"{str(path)!r} is not a run directory: it has no grid.csv")
        table = read_grid_csv(path / "grid.csv")
        problems = read_prompts(path / "prompts.jsonl") if (path / "prompts.jsonl").is_file() else []
        info = read_run_json(path / "run.json") if (path / "run.json").is_file() else {}
        emergence = read_emergence_csv(path / "emergence.csv") if (path / "emergence.csv").is_file() else None
        examples = read_examples(path / EXAMPLES_FILE) if (path / EXAMPLES_FILE).is_file() else []
        record = RunRecord.from_dict(info, str(path / "run.json")).to_dict()
        return cls(table, problems, record, emergence=emergence, examples=examples)

    def report(self, *others: "AccuracyGrid", labels: Sequence[str] | None = None) -> "Report":
        """One self-contained HTML page to browse this grid (and ``others``, to compare runs), offline.

        Returns:
            The :class:`~lens_digits.results.report.Report`: ``save(path)`` writes it, and a notebook shows it inline.
        """
        from lens_digits.results.page import Report

        return Report([self, *others], labels)

    @property
    def record(self) -> RunRecord:
        """``info`` as a :class:`~lens_digits.results.record.RunRecord` (what ``run.json`` holds)."""
        return RunRecord.from_dict(self.info)


def check_output_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Check that a run directory can be written at ``path``, creating nothing (see :func:`lens_digits.storage.paths.check_output`).

    Returns:
        The absolute path of the output folder.
    """
    return check_output(path, overwrite)
