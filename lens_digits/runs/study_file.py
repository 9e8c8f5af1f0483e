"""A study file: models x tasks in TOML, read and checked into a :class:`Study` (run by :mod:`lens_digits.runs.study`).

An example::

    methods = ["logit_lens", "probe"]     # defaults for every task
    target = "first"

    [[models]]
    name = "arith-llama"
    model = "builtin:arith-llama"         # a shipped model; or a hub name, or a checkpoint folder

    [[tasks]]
    name = "add"
    scales = "1-3"
    n = 100

Every setting is checked when the file is read (an unknown key, a bad label,
a repeated name, an impossible value): a bad file stops before anything runs.
"""

import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lens_digits.errors import LensDigitsError
from lens_digits.problems.tasks import TaskConfig
from lens_digits.runs.config import SweepConfig

__all__ = ["STUDY_FORMAT", "Study", "StudyModel", "StudyTask", "check_study_folder", "load_study"]

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
    imports: tuple[str, ...] = ()
    """Modules that register methods of their own (``imports = [...]`` in the file, or ``--import``), imported by every unit."""

    def units(self, out: str | os.PathLike[str], threads: int | None = None) -> list[dict[str, Any]]:
        """One JSON-ready unit per (model, task), in file order.

        Returns:
            The units: each with its output folder, model, task and sweep settings, shard size, cache flag, threads and imports.
        """
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
                "imports": list(self.imports),
            }
            for m in self.models
            for t in self.tasks
        ]


def _label(value: Any, what: str, where: str) -> str:
    """A model's or task's name, checked to be usable as a folder name.

    Returns:
        ``value``.

    Raises:
        LensDigitsError: It is not 1-80 letters, digits, '.', '_' or '-' starting with a letter or digit.
    """
    if not isinstance(value, str) or not LABEL.fullmatch(value):
        raise LensDigitsError(
            f"{where}: {what} name {value!r} must be 1-80 letters, digits, '.', '_' or '-' (it names a folder), starting with "
            "a letter or digit"
        )
    return value


def _task(entry: dict[str, Any], defaults: dict[str, Any], where: str) -> StudyTask:
    """A ``[[tasks]]`` table over the file's defaults, checked.

    Returns:
        The task, with its TaskConfig and SweepConfig.

    Raises:
        LensDigitsError: An unknown setting, a bad name, or an impossible value.
    """
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
    """A ``[[models]]`` table, checked.

    Returns:
        The model's label, source, dtype, device and GPUs.

    Raises:
        LensDigitsError: Not a table, an unknown key, no source, a bad name, or a bad dtype or GPU count.
    """
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
    from lens_digits.model.loading import parse_dtype

    dtype = str(entry.get("dtype", "float32"))
    parse_dtype(dtype)
    return StudyModel(name, source, dtype, device, float(gpus))


def load_study(
    path: str | os.PathLike[str] | None = None, *, data: dict[str, Any] | None = None, imports: Sequence[str] = ()
) -> tuple[Study, str | None]:
    """Read a study file (or its parsed ``data``); ``imports``: modules with methods of their own, beside the file's ``imports``.

    Returns:
        The study and its ``out`` setting (None if it has none).

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
    listed = data.pop("imports", [])
    if not isinstance(listed, list) or not all(isinstance(m, str) and m for m in listed):
        raise LensDigitsError(f'{where}: imports must be a list of module names, e.g. imports = ["my_methods"]')
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
    modules = tuple(dict.fromkeys([*listed, *imports]))
    from lens_digits.methods import import_modules

    import_modules(modules)
    study = Study([_model(m, where) for m in models], [_task(t, data, where) for t in tasks], shard_size, cache, modules)
    for kind, names in (("model", [m.name for m in study.models]), ("task", [t.name for t in study.tasks])):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise LensDigitsError(f"{where}: {kind} name(s) {repeated} appear more than once; each names a folder")
    if out is not None and not isinstance(out, str):
        raise LensDigitsError(f"{where}: out must be a folder name")
    return study, out


def check_study_folder(out: Path) -> None:
    """A study writes into a new or empty folder, or one that holds a study it wrote.

    Raises:
        LensDigitsError: ``out`` is a file, or a folder that is not empty and holds no study of this package.
    """
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
