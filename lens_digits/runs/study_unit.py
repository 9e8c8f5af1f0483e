"""One study unit: a (model, task) run into its own run directory, the same function whichever executor runs it.

A unit is a JSON-ready dict (see :meth:`lens_digits.runs.study_file.Study.units`). Its run directory's ``run.json`` records the
unit's identity (:func:`_identity`), so a finished unit is recognised and not run again.
"""

import json
from pathlib import Path
from typing import Any

from lens_digits.errors import LensDigitsError
from lens_digits.problems.tasks import TaskConfig
from lens_digits.runs.config import SweepConfig
from lens_digits.storage.paths import is_run_directory
from lens_digits.storage.reservation import Reservation

__all__ = ["run_unit"]


def _made_by(folder: Path, unit: dict[str, Any]) -> bool:
    """Whether ``folder`` is a finished run directory of exactly this unit.

    Returns:
        True if ``folder`` is a run directory whose ``run.json`` records this unit's identity.
    """
    if not is_run_directory(folder):
        return False
    try:
        info = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("study", {}).get("unit") == _identity(unit)


def _identity(unit: dict[str, Any]) -> dict[str, Any]:
    """What makes a unit's run directory (its output folder is where it goes, not what it is).

    Returns:
        The unit without ``out``, ``threads``, ``imports`` and ``origin`` (where a Ray worker gets the model), as JSON reads it back.
    """
    identity: dict[str, Any] = json.loads(
        json.dumps({k: v for k, v in unit.items() if k not in ("out", "threads", "imports", "origin")}, default=str)
    )
    return identity


def run_unit(unit: dict[str, Any]) -> dict[str, Any]:
    """Run one (model, task) unit into its run directory, unless a finished one is there; a summary of it.

    Used as it is by every executor. Torch's thread count is the unit's, so a unit gives the same bytes in any process.

    Returns:
        ``{"out": ..., "ran": ...}``: the run directory, and whether the unit ran (False: a finished one was there).

    Raises:
        LensDigitsError: The run directory or the folder above it is a symbolic link.
    """
    import warnings

    import torch

    from lens_digits.residuals.cache import ResidualCache
    from lens_digits.runs.remote import load_unit_model
    from lens_digits.runs.sweep import sweep

    out = Path(unit["out"])
    if _made_by(out, unit):
        return {"out": str(out), "ran": False}
    from lens_digits.methods import import_modules

    import_modules(unit.get("imports", ()))  # a Ray worker imports the driver's plug-in modules too
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
            model = load_unit_model(spec, unit.get("origin"))
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
