"""Studies over many models: one run directory per model and task, then one combined table and figure.

A study file (TOML) lists models and tasks; every (model, task) pair is a
**unit**: one ``lens-digits run`` into ``OUT/MODEL/TASK``, with its residual
cache, so each unit resumes alone and a finished one is not run again (its
``run.json`` records the unit it made). Units are plain JSON-ready dicts run
by :func:`run_unit`, the same function whichever executor runs them: one after
another in this process (``local``), or as Ray tasks (``ray``, see
:mod:`lens_digits.executors`). Then the units' grids are read back and
combined: ``study.csv`` and ``study_emergence.csv`` (every row with ``model``,
``task``, ``n_params`` and ``n_layers`` in front) and ``study.html`` (heatmaps
faceted by model and task, and the emergence layer against model size).

An example::

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

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lens_digits import atomic
from lens_digits.config import SweepConfig
from lens_digits.errors import LensDigitsError, first_line
from lens_digits.rundir import Reservation, is_run_directory, resolve_output
from lens_digits.tasks import TaskConfig

__all__ = ["STUDY_FORMAT", "Study", "StudyModel", "StudyTask", "load_study", "run_study", "run_unit"]

STUDY_FORMAT = "lens_digits.study"
STUDY_FILES = ("study.json", "study.csv", "study_emergence.csv", "study.html")
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
TASK_ALIASES = {"n": "n_per_scale", "target": "targets"}
MODEL_KEYS = ("name", "model", "dtype", "device", "gpus")
SWEEP_KEYS = tuple(f.name for f in dataclasses.fields(SweepConfig) if f.name not in ("progress", "device"))
TASK_KEYS = tuple(f.name for f in dataclasses.fields(TaskConfig))


@dataclasses.dataclass(frozen=True)
class StudyModel:
    """One model of a study: a label, where it comes from, and how to load it."""

    name: str
    model: str
    dtype: str = "float32"
    device: str | None = None
    gpus: float = 0.0
    """GPUs a Ray task running this model asks for (default: 1 if ``device`` is a GPU, else 0)."""


@dataclasses.dataclass(frozen=True)
class StudyTask:
    """One task of a study: a label, the problems and the sweep settings."""

    name: str
    task: TaskConfig
    sweep: SweepConfig


@dataclasses.dataclass
class Study:
    """Models x tasks; see the module docs for the file format."""

    models: list[StudyModel]
    tasks: list[StudyTask]
    shard_size: int = 256
    cache: bool = True

    def units(self, out: str | os.PathLike[str], threads: int | None = None) -> list[dict[str, Any]]:
        """One JSON-ready unit per (model, task), in file order."""
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        root = Path(out)
        return [
            {
                "out": str(root / m.name / t.name),
                "model": dataclasses.asdict(m),
                "task_name": t.name,
                "task": t.task.to_dict(),
                "sweep": t.sweep.to_dict(),
                "shard_size": self.shard_size,
                "cache": self.cache,
                "threads": threads,
            }
            for m in self.models
            for t in self.tasks
        ]


def _label(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not LABEL.fullmatch(value):
        raise LensDigitsError(
            f"{where}: {what} name {value!r} must be 1-80 letters, digits, '.', '_' or '-' (it names a folder), starting with "
            "a letter or digit"
        )
    return value


def _task(entry: dict[str, Any], defaults: dict[str, Any], where: str) -> StudyTask:
    merged = {**defaults, **entry}
    name = _label(merged.pop("name", None), "a task", where)
    settings = {TASK_ALIASES.get(k, k): v for k, v in merged.items()}
    unknown = sorted(k for k in settings if k not in TASK_KEYS and k not in SWEEP_KEYS)
    if unknown:
        raise LensDigitsError(f"{where}: task {name!r} has unknown setting(s) {unknown}; use TaskConfig and SweepConfig field names")
    task = TaskConfig(**{k: v for k, v in settings.items() if k in TASK_KEYS})
    sweep = SweepConfig(**{k: v for k, v in settings.items() if k in SWEEP_KEYS})
    return StudyTask(name, task, sweep)


def _model(entry: Any, where: str) -> StudyModel:
    if not isinstance(entry, dict):
        raise LensDigitsError(f"{where}: each [[models]] entry must be a table")
    unknown = sorted(k for k in entry if k not in MODEL_KEYS)
    if unknown:
        raise LensDigitsError(f"{where}: a model has unknown key(s) {unknown}; use {', '.join(MODEL_KEYS)}")
    source = entry.get("model")
    if not isinstance(source, str) or not source:
        raise LensDigitsError(f'{where}: every model needs model = "builtin", a hub name or a checkpoint folder')
    name = _label(entry.get("name", Path(source).name or source), "a model", where)
    device = entry.get("device")
    gpus = entry.get("gpus", 1.0 if isinstance(device, str) and device.startswith("cuda") else 0.0)
    if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or gpus < 0:
        raise LensDigitsError(f"{where}: model {name!r}: gpus must be a non-negative number, got {gpus!r}")
    from lens_digits.models import parse_dtype

    dtype = str(entry.get("dtype", "float32"))
    parse_dtype(dtype)
    return StudyModel(name, source, dtype, device, float(gpus))


def load_study(path: str | os.PathLike[str] | None = None, *, data: dict[str, Any] | None = None) -> tuple[Study, str | None]:
    """Read a study file (or its parsed ``data``); returns the study and its ``out`` setting (None if it has none).

    Raises:
        LensDigitsError: The file is missing, not TOML, or names an unknown setting, a bad label or a repeated one.
    """
    where = str(path) if path is not None else "study"
    if data is None:
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(Path(path).read_text())  # type: ignore[arg-type]
        except OSError as e:
            raise LensDigitsError(f"cannot read study file {where!r}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise LensDigitsError(f"study file {where!r} is not valid TOML: {e}") from None
    data = dict(data)
    models, tasks = data.pop("models", None), data.pop("tasks", None)
    out = data.pop("out", None)
    shard_size = data.pop("shard_size", 256)
    cache = data.pop("cache", True)
    if not isinstance(models, list) or not models:
        raise LensDigitsError(f"{where}: list the models as [[models]] tables (at least one)")
    if not isinstance(tasks, list) or not tasks:
        tasks = [{"name": "task"}]
    if not all(isinstance(t, dict) for t in tasks):
        raise LensDigitsError(f"{where}: each [[tasks]] entry must be a table")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or not 1 <= shard_size <= 1_000_000:
        raise LensDigitsError(f"{where}: shard_size must be an integer from 1 to 1,000,000 problems, got {shard_size!r}")
    if not isinstance(cache, bool):
        raise LensDigitsError(f"{where}: cache must be true or false, got {cache!r}")
    study = Study([_model(m, where) for m in models], [_task(t, data, where) for t in tasks], shard_size, cache)
    for kind, names in (("model", [m.name for m in study.models]), ("task", [t.name for t in study.tasks])):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise LensDigitsError(f"{where}: {kind} name(s) {repeated} appear more than once; each names a folder")
    if out is not None and not isinstance(out, str):
        raise LensDigitsError(f"{where}: out must be a folder name")
    return study, out


# ---- one unit ------------------------------------------------------------------------------------


def _made_by(folder: Path, unit: dict[str, Any]) -> bool:
    """Whether ``folder`` is a finished run directory of exactly this unit."""
    if not is_run_directory(folder):
        return False
    try:
        info = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("study", {}).get("unit") == _identity(unit)


def _identity(unit: dict[str, Any]) -> dict[str, Any]:
    """What makes a unit's run directory (its output folder is where it goes, not what it is)."""
    identity: dict[str, Any] = json.loads(json.dumps({k: v for k, v in unit.items() if k not in ("out", "threads")}, default=str))
    return identity


def run_unit(unit: dict[str, Any]) -> dict[str, Any]:
    """Run one (model, task) unit into its run directory, unless a finished one is there; a summary of it.

    Used as it is by every executor. Torch's thread count is the unit's, so a
    unit gives the same bytes in any process.
    """
    import warnings

    import torch

    from lens_digits.builtin import model_source
    from lens_digits.cache import ResidualCache
    from lens_digits.models import load_model
    from lens_digits.sweep import sweep

    out = Path(unit["out"])
    if _made_by(out, unit):
        return {"out": str(out), "ran": False}
    for folder in (out.parent, out):
        if folder.is_symlink():
            raise LensDigitsError(f"{str(folder)!r} is a symbolic link; a study never writes through one: remove it")
    threads = torch.get_num_threads()
    torch.set_num_threads(int(unit["threads"]))
    try:
        spec = unit["model"]
        task = TaskConfig.from_dict(unit["task"])
        config = SweepConfig.from_dict(unit["sweep"])
        with Reservation(out, overwrite=True) as reservation:
            model = load_model(model_source(spec["model"]), device=spec.get("device"), dtype=spec.get("dtype"), progress=False)
            cache = None
            if unit["cache"]:
                cache = ResidualCache.for_run_directory(reservation.target, overwrite=True, shard_size=int(unit["shard_size"]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                grid = sweep(model, task, config, cache=cache)
            n_params = sum(p.numel() for p in model.parameters())
            grid.info["study"] = {"unit": _identity(unit), "n_params": n_params}
            if cache is not None:
                cache.take_over(grid.info)
            grid.save(out, overwrite=True, reservation=reservation, cache=None if cache is None else cache.folder)
    finally:
        torch.set_num_threads(threads)
    return {"out": str(out), "ran": True}


# ---- the whole study -----------------------------------------------------------------------------


def check_study_folder(out: Path) -> None:
    """A study writes into a new or empty folder, or one that holds a study it wrote."""
    if not out.exists():
        return
    if not out.is_dir():
        raise LensDigitsError(f"study folder {str(out)!r} is a file; choose a folder")
    names = {p.name for p in out.iterdir()}
    if not names:
        return
    try:
        ours = json.loads((out / "study.json").read_text()).get("format") == STUDY_FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise LensDigitsError(
            f"study folder {str(out)!r} is not empty and holds no study of lens-digits (no study.json); choose a new folder"
        )


def run_study(
    study: Study,
    out: str | os.PathLike[str] | None,
    *,
    executor: str = "local",
    address: str | None = None,
    progress: bool = False,
) -> "StudyResult":
    """Run every unit of ``study`` into ``out`` (each resumes alone; finished ones are kept) and combine them.

    Args:
        study: From :func:`load_study`.
        out: The study folder: ``out/MODEL/TASK`` run directories and the combined files.
        executor: ``local`` (one unit after another, here) or ``ray`` (a Ray task per unit).
        address: For ``ray``: a running cluster's address; None: a cluster already
            initialised in this process, else a local one (loopback only).
        progress: Show which unit runs.
    """
    from lens_digits.executors import executor_named

    if out is None:
        raise LensDigitsError("give the study folder (out = ... in the study file, or --out)")
    root = resolve_output(out)
    check_study(study, root)
    run: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] = executor_named(executor, address=address, progress=progress)
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "study.json", json.dumps({"format": STUDY_FORMAT, "status": "running"}, indent=2) + "\n")
    units = study.units(root)
    try:
        summaries = run(units)
    except BaseException as e:  # interrupted (Ctrl-C, SIGTERM) or the executor itself failed: combine what finished
        done = [{"out": u["out"], "ran": False} for u in units if _made_by(Path(u["out"]), u)]
        finished = [u for u in units if _made_by(Path(u["out"]), u)]
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        _finish(root, finished, done, executor, status, [{"unit": "(executor)", "error": first_line(e)}])
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
    """Combine the finished units (if any) and write the study's files with its status."""
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
        LensDigitsError: The study folder cannot be used, a unit folder is a symbolic link, a model
            cannot be reached (a missing folder, a hub name offline and not cached), or a task's problems
            cannot be made or tokenized for a model (an impossible scale, a template the tokenizer merges).
    """
    import warnings

    from lens_digits.builtin import model_source
    from lens_digits.checkpoints import peek_checkpoint
    from lens_digits.errors import BoundaryMergeError
    from lens_digits.models import check_source
    from lens_digits.outputs import check_output, protected_reason
    from lens_digits.targets import encode_checked
    from lens_digits.tasks import generate_problems

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
        """Heatmaps faceted by task (rows) and model (columns), for one method and target."""
        from lens_digits.plotting import study_heatmaps

        return study_heatmaps(self.table, method, target)

    def size_figure(self, threshold: float = 0.5, method: str | None = None, target: str | None = None) -> Any:
        """The emergence layer (as a share of the model's depth) against model size, per task and scale."""
        from lens_digits.plotting import study_emergence

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
        html = self.figure().to_html(include_plotlyjs=True, full_html=False)
        if len(self.emergence):
            html += self.size_figure().to_html(include_plotlyjs=False, full_html=False)
        _write(root / "study.html", f"<html><head><meta charset='utf-8'></head><body>{html}</body></html>\n")
        record = {
            "format": STUDY_FORMAT,
            "status": status,
            "executor": executor,
            "units": [{"out": os.path.relpath(u["out"], root), **_identity(u)} for u in self.units],
            "ran": [os.path.relpath(s["out"], root) for s in summaries if s.get("ran")],
        }
        if status != "done":
            record["failed"] = list(failed)
        _write(root / "study.json", json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def combine(units: Sequence[dict[str, Any]]) -> StudyResult:
    """Every unit's grid and emergence layers in one table, with ``model``, ``task``, ``n_params`` and ``n_layers`` in front."""
    import pandas as pd

    from lens_digits.grid import AccuracyGrid, fill_breakdown_labels

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


def study_command(args: argparse.Namespace) -> int:
    """``lens-digits study STUDY.toml``."""
    study, out = load_study(args.study_file)
    out = args.out or out
    if out is None:
        raise LensDigitsError("the study file names no folder (out = ...); give --out")
    result = run_study(study, out, executor=args.executor, address=args.address, progress=not args.no_progress)
    print(f"{len(result.units)} units ({len(study.models)} models x {len(study.tasks)} tasks) in {out}")
    print(f"wrote {out}/{{study.csv, study_emergence.csv, study.html, study.json}}")
    return 0
