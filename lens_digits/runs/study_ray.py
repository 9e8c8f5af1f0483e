"""A study's units as Ray tasks on nodes that share no disk with the driver (``lens-digits study --executor ray``).

The driver sends each unfinished unit with its folder relative to the study folder and its model's origin
(:func:`lens_digits.runs.remote.model_origin`); a worker runs it in a private temporary folder
(:func:`unit_on_worker`) and sends the run directory back as files; the driver writes it into the study folder
through a :class:`~lens_digits.storage.reservation.Reservation`, as each unit arrives. A driver stopped mid-study
keeps the units it wrote, and the same command resumes with the others.
"""

import os
import shutil
from pathlib import Path
from typing import Any

from lens_digits.runs.remote import model_origin, node_id, pack, scratch_folder, unpack
from lens_digits.runs.study_unit import _made_by, run_unit

__all__ = ["study_on_ray", "unit_on_worker"]


def unit_on_worker(unit: dict[str, Any]) -> dict[str, Any]:
    """A study unit run on a Ray worker: its run directory made in a private temporary folder and sent back as files.

    ``unit["out"]`` is the unit's folder relative to the study folder.

    Returns:
        The run directory's files (:func:`pack`), with ``node`` (the Ray node that ran it) and ``ran``.
    """
    tmp = scratch_folder("unit")
    try:
        out = tmp / unit["out"]
        summary = run_unit({**unit, "out": str(out)})
        return {**pack(out), "node": node_id(), "ran": summary["ran"]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def study_on_ray(
    units: list[dict[str, Any]], root: Path, *, address: str | None = None, progress: bool = False, **ray: Any
) -> list[dict[str, Any]]:
    """Run a study's unfinished units as Ray tasks and write each unit's run directory here as it comes back.

    Finished units (their ``run.json`` records the unit) are not sent. A unit is sent with its folder relative to the study
    folder and its model's origin (:func:`model_origin`), never a path of this machine. ``ray``: ``threads``, ``gpus``,
    ``resources`` of :func:`lens_digits.runs.executors.run_ray`.

    Returns:
        One summary per unit, in the units' order: ``out``, ``ran`` and, for units that ran, the Ray ``node``; or the failure.
    """
    from lens_digits.runs.executors import run_ray

    todo = [u for u in units if not _made_by(Path(u["out"]), u)]
    summaries = {u["out"]: {"out": u["out"], "ran": False} for u in units if u not in todo}
    sent = [{**u, "out": Path(os.path.relpath(u["out"], root)).as_posix()} for u in todo]
    shipped: dict[str, dict[str, Any]] = {}

    def prepare(ray_module: Any) -> None:
        for u in sent:
            u["origin"] = model_origin(ray_module, u["model"]["model"], shipped)

    def write(unit: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        from lens_digits.errors import LensDigitsError
        from lens_digits.storage.reservation import Reservation

        out = root / unit["out"]
        for folder in (out.parent, out):
            if folder.is_symlink():
                raise LensDigitsError(f"{str(folder)!r} is a symbolic link; a study never writes through one: remove it")
        with Reservation(out, overwrite=True) as reservation:
            reservation.write(lambda tmp: unpack(result, tmp))
        return {"out": str(out), "ran": bool(result["ran"]), "node": result["node"]}

    if progress and summaries:
        print(f"ray: {len(summaries)} unit(s) finished before, kept", flush=True)
    results = run_ray(
        sent, address=address, progress=progress, work=unit_on_worker, keep_going=True, on_result=write, prepare=prepare, **ray
    )
    for unit, summary in zip(todo, results, strict=True):
        summaries[unit["out"]] = {**summary, "out": unit["out"]}
    return [summaries[u["out"]] for u in units]
