"""Studies over many models: one run directory per model and task, then one combined table and figure.

A study file (TOML) lists models and tasks; every (model, task) pair is a **unit**: one ``lens-digits run`` into
``OUT/MODEL/TASK``, with its residual cache, so each unit resumes alone and a finished one is not run again (its
``run.json`` records the unit it made). Units are plain JSON-ready dicts run by :func:`run_unit`, the same function
whichever executor runs them: one after another in this process (``local``), or as Ray tasks (``ray``, see
:mod:`lens_digits.runs.study_ray`). Then the units' grids are read back and combined: ``study.csv`` and
``study_emergence.csv`` (every row with ``model``, ``task``, ``n_params`` and ``n_layers`` in front) and ``study.html``
(heatmaps faceted by model and task, and the emergence layer against model size).

The file format is :mod:`lens_digits.runs.study_file`'s. An example::

    methods = ["logit_lens", "probe"]     # defaults for every task
    target = "first"

    [[models]]
    name = "arith-llama"
    model = "builtin"                     # the shipped model; or a hub name, or a checkpoint folder

    [[models]]
    name = "pythia-70m"
    model = "EleutherAI/pythia-70m"
    dtype = "float32"                     # device = "cuda"; gpus = 1 (what a Ray task asks for)

    [[tasks]]
    name = "add"
    scales = "1-3"
    n = 100

    [[tasks]]
    name = "add-spaced"
    template = "spaced"
    answer_prefix = ""
"""

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lens_digits.errors import LensDigitsError, first_line
from lens_digits.runs.study_file import STUDY_FORMAT, Study, StudyModel, StudyTask, check_study_folder, load_study
from lens_digits.runs.study_unit import _identity, _made_by, run_unit
from lens_digits.storage import atomic
from lens_digits.storage.paths import resolve_output

__all__ = [
    "STUDY_FORMAT",
    "Study",
    "StudyModel",
    "StudyResult",
    "StudyTask",
    "check_study",
    "combine",
    "load_study",
    "run_study",
    "run_unit",
]


# ---- the whole study -----------------------------------------------------------------------------


def run_study(
    study: Study,
    out: str | os.PathLike[str] | None,
    *,
    executor: str = "local",
    address: str | None = None,
    progress: bool = False,
    threads: int | None = None,
    **ray: Any,
) -> "StudyResult":
    """Run every unit of ``study`` into ``out`` (each resumes alone; finished ones are kept) and combine them.

    Args:
        study: From :func:`load_study`.
        out: The study folder: ``out/MODEL/TASK`` run directories and the combined files.
        executor: ``local`` (one unit after another, here) or ``ray`` (a Ray task per unit).
        address: For ``ray``: a running cluster's address; None: a cluster this process already joined, else a local one (loopback only).
        progress: Show which unit runs.
        threads: Torch CPU threads per unit (default: this process's); for ``ray``, what each task asks for (default: fitted).
        ray: For ``ray``: ``gpus`` and ``resources`` per unit (see :func:`lens_digits.runs.executors.run_ray`).

    Returns:
        The units' grids and emergence layers, combined.

    Raises:
        LensDigitsError: ``out`` is None, the study fails :func:`check_study`, or a unit failed (the finished ones are combined first).
    """
    from lens_digits.runs.executors import executor_named

    if out is None:
        raise LensDigitsError("give the study folder (out = ... in the study file, or --out)")
    root = resolve_output(out)
    check_study(study, root)
    run: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] = executor_named(executor, run_unit, address=address, progress=progress)
    if executor == "ray":  # the units' run directories come back through Ray's object store and are written here
        from lens_digits.runs.study_ray import study_on_ray

        run = lambda units: study_on_ray(units, root, address=address, progress=progress, threads=threads, **ray)  # noqa: E731
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "study.json", json.dumps({"format": STUDY_FORMAT, "status": "running"}, indent=2) + "\n")
    units = study.units(root, threads)
    try:
        summaries = run(units)
    except BaseException as e:  # interrupted (Ctrl-C, SIGTERM) or the executor itself failed: combine what finished
        done = [{"out": u["out"], "ran": False} for u in units if _made_by(Path(u["out"]), u)]
        finished = [u for u in units if _made_by(Path(u["out"]), u)]
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        _finish(root, finished, done, executor, status, [{"unit": "(executor)", "error": first_line(e)}])
        if isinstance(e, KeyboardInterrupt) and finished:  # what the command line says it stopped after
            e.written = f"{len(finished)} finished unit(s) into {root} (the same command resumes with the others)"  # type: ignore[attr-defined]
        raise
    failed = [{"unit": os.path.relpath(s_["out"], root), "error": s_["error"]} for s_ in summaries if "error" in s_]
    finished = [u for u, s_ in zip(units, summaries, strict=True) if "error" not in s_]
    result = _finish(root, finished, [s_ for s_ in summaries if "error" not in s_], executor, "failed" if failed else "done", failed)
    if failed:
        first = failed[0]
        raise LensDigitsError(
            f"{len(failed)} of {len(units)} study units failed ({first['unit']}: {first['error']}); the {len(finished)} finished "
            f"unit(s) are combined in {str(root)!r} (study.json says status failed and lists the failures)"
        )
    assert result is not None
    return result


def _finish(
    root: Path, finished: list[dict[str, Any]], summaries: list[dict[str, Any]], executor: str, status: str, failed: list[dict[str, Any]]
) -> "StudyResult | None":
    """Combine the finished units (if any) and write the study's files with its status.

    Returns:
        The combined units; None if none finished (only ``study.json`` is written).
    """
    if not finished:
        record = {"format": STUDY_FORMAT, "status": status, "executor": executor, "units": [], "ran": [], "failed": failed}
        _write(root / "study.json", json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        return None
    result = combine(finished)
    result.save(root, summaries, executor, status=status, failed=failed)
    return result


def check_study(study: Study, root: Path) -> None:
    """Everything a study needs, checked before any unit runs: the folder, each model's source, each task with each tokenizer.

    Raises:
        LensDigitsError: The study folder cannot be used, a unit folder is a symbolic link, a model cannot be reached (a missing
            folder, a hub name offline and not cached), or a task's problems cannot be made or tokenized for a model (an impossible scale).
        BoundaryMergeError: A local model's tokenizer merges a task's answer into its prompt (the template).
    """
    import warnings

    from lens_digits.builtin import model_source
    from lens_digits.errors import BoundaryMergeError
    from lens_digits.model.checkpoints import peek_checkpoint
    from lens_digits.model.loading import check_source
    from lens_digits.problems.targets import encode_checked
    from lens_digits.problems.tasks import generate_problems
    from lens_digits.storage.paths import check_output, protected_reason

    reason = protected_reason(root)
    if reason:
        raise LensDigitsError(f"refusing to write a study into {str(root)!r}: {reason}; pass a new folder")
    check_study_folder(root)
    if not root.exists():
        check_output(root)  # the nearest existing folder above it must be writable
    elif not os.access(root, os.W_OK | os.X_OK):
        raise LensDigitsError(f"study folder {str(root)!r} is not writable; choose another folder")
    for m in study.models:
        for folder in (root / m.name, *(root / m.name / t.name for t in study.tasks)):
            if folder.is_symlink():
                raise LensDigitsError(
                    f"{str(folder)!r} is a symbolic link; a study writes its unit folders itself and never through a link: remove it"
                )
    from lens_digits.methods import method_class

    for t in study.tasks:
        for name in t.sweep.methods:
            try:
                method_class(name)
            except LensDigitsError as e:
                raise LensDigitsError(f"study task {t.name!r}: {e} (a method of your own: imports = [...] or --import)") from None
    problems = {}
    for t in study.tasks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                problems[t.name] = generate_problems(t.task)
            except LensDigitsError as e:
                raise LensDigitsError(f"study task {t.name!r}: {e}") from None
    for m in study.models:
        try:
            source = check_source(model_source(m.model))
        except LensDigitsError as e:
            raise LensDigitsError(f"study model {m.name!r}: {e}") from None
        if not source.local:
            continue
        tokenizer, n_ctx = peek_checkpoint(source.name)
        for t in study.tasks:
            bos = None if t.sweep.prepend_bos is False else tokenizer.bos_token_id
            try:
                encode_checked(tokenizer, problems[t.name], bos, n_ctx, chat=t.sweep.chat)
            except BoundaryMergeError as e:
                raise BoundaryMergeError(f"study model {m.name!r}, task {t.name!r}: template {t.task.template!r}: {e}") from None
            except LensDigitsError as e:
                raise LensDigitsError(f"study model {m.name!r}, task {t.name!r}: {e}") from None


@dataclasses.dataclass
class StudyResult:
    """The combined table and emergence layers of a study's units."""

    table: Any
    emergence: Any
    units: list[dict[str, Any]]

    def figure(self, method: str | None = None, target: str | None = None) -> Any:
        """Heatmaps faceted by task (rows) and model (columns), for one method and target.

        Returns:
            The plotly figure.
        """
        from lens_digits.results.study_figures import study_heatmaps

        return study_heatmaps(self.table, method, target)

    def size_figure(self, threshold: float = 0.5, method: str | None = None, target: str | None = None) -> Any:
        """The emergence layer (as a share of the model's depth) against model size, per task and scale.

        Returns:
            The plotly figure.
        """
        from lens_digits.results.study_figures import study_emergence

        return study_emergence(self.emergence, threshold, method, target)

    def save(
        self,
        root: Path,
        summaries: Sequence[dict[str, Any]],
        executor: str,
        *,
        status: str = "done",
        failed: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Write the combined files, each by an atomic rename; ``status`` other than ``done`` marks them partial."""
        _write(root / "study.csv", self.table.to_csv(index=False))
        _write(root / "study_emergence.csv", self.emergence.to_csv(index=False))
        from lens_digits.results.offline import figure_page  # plotly.js once, compressed

        figures = [self.figure(), self.size_figure()] if len(self.emergence) else [self.figure()]
        _write(root / "study.html", figure_page(*figures, title="Accuracy Breakdown · study"))
        record: dict[str, Any] = {
            "format": STUDY_FORMAT,
            "status": status,
            "executor": executor,
            "units": [{"out": os.path.relpath(u["out"], root), **_identity(u)} for u in self.units],
            "ran": [os.path.relpath(s["out"], root) for s in summaries if s.get("ran")],
        }
        if any("node" in s for s in summaries):  # Ray: which node ran each unit
            record["nodes"] = {os.path.relpath(s["out"], root): s["node"] for s in summaries if "node" in s}
        if status != "done":
            record["failed"] = list(failed)
        _write(root / "study.json", json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def combine(units: Sequence[dict[str, Any]]) -> StudyResult:
    """Every unit's grid and emergence layers in one table, with ``model``, ``task``, ``n_params`` and ``n_layers`` in front.

    Returns:
        The combined table, emergence layers (empty if no unit has any) and ``units``.
    """
    import pandas as pd

    from lens_digits.results.cells import fill_breakdown_labels
    from lens_digits.results.grid import AccuracyGrid

    tables: list[pd.DataFrame] = []
    emergences: list[pd.DataFrame] = []
    for u in units:
        grid = AccuracyGrid.load(u["out"])
        front = {
            "model": u["model"]["name"],
            "task": u["task_name"],
            "n_params": int(grid.info.get("study", {}).get("n_params", 0)),
            "n_layers": int(grid.info.get("model", {}).get("n_layers", 0)),
        }
        for frame, into in ((grid.table, tables), (grid.emergence, emergences)):
            frame = frame.copy()
            for i, (k, v) in enumerate(front.items()):
                frame.insert(i, k, v)
            into.append(frame)
    table = pd.concat(tables, ignore_index=True)
    emergence = pd.concat([e for e in emergences if len(e)], ignore_index=True) if any(len(e) for e in emergences) else pd.DataFrame()
    return StudyResult(fill_breakdown_labels(table), fill_breakdown_labels(emergence), list(units))


def _write(path: Path, text: str) -> None:
    atomic.write_file(path, text.encode())
