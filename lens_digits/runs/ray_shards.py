"""One run's residual shards computed as Ray tasks (``lens-digits run --executor ray``), sent back and written here.

The driver sends one unit per shard its cache lacks; a worker computes the shard
into a private temporary cache and returns its two files
(:func:`shard_on_worker`); the driver checks them and
writes the tensors, then the sidecar that makes the shard valid, into the
run's cache, with the cache's own atomic writes. The sweep then reads every
shard back, as it would after a killed run.
"""

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from lens_digits.errors import ClusterError
from lens_digits.runs.remote import node_id, pack, scratch_folder

__all__ = ["collect_block", "prefill_with_ray", "shard_on_worker", "shard_units"]

Units = list[dict[str, Any]]

_MODELS: dict[str, tuple[Any, dict[Any, dict[str, Any]]]] = {}
"""One model per Ray worker process and setting, with the cache keys made for it (its weights fingerprint and
tokenizer hash are computed once per worker, not once per shard)."""


def _model_and_key(
    spec: dict[str, Any], origin: dict[str, Any] | None, chat: bool, prepend_bos: bool | None, shard_size: int
) -> tuple[Any, dict[str, Any]]:
    from lens_digits.model.adapter import ModelAdapter
    from lens_digits.residuals.cache import sweep_key
    from lens_digits.runs.remote import load_unit_model

    which = json.dumps([spec.get("model"), spec.get("dtype"), spec.get("device"), (origin or {}).get("as")], default=str)
    if which not in _MODELS:
        _MODELS.clear()
        _MODELS[which] = (ModelAdapter.wrap(load_unit_model(spec, origin)), {})
    adapter, keys = _MODELS[which]
    if (chat, prepend_bos, shard_size) not in keys:
        keys[(chat, prepend_bos, shard_size)] = sweep_key(adapter, chat, prepend_bos, shard_size)
    return adapter, keys[(chat, prepend_bos, shard_size)]


def shard_units(model: dict[str, Any], task: Any, config: Any, cache: Any, threads: int) -> Units:
    """One unit per residual shard of a sweep (``lens-digits run --executor ray``): what the sweep itself would collect.

    Returns:
        The JSON-ready units, per seed: the model, task and sweep settings, the shard's name and rows, the shard size and ``threads``.
    """
    import dataclasses
    import warnings

    from lens_digits.methods.base import method_class
    from lens_digits.problems.tasks import generate_problems
    from lens_digits.runs.draw import residual_kind, residual_rows

    fits = config.cache_train or any(getattr(method_class(m), "fits", False) for m in config.methods)
    kind = residual_kind(config.targets)
    units = []
    for seed in [int(s) for s in config.seeds] if config.seeds is not None else [task.seed]:
        draw = dataclasses.replace(task, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            problems = generate_problems(draw)
        run = [problems[i] for i in residual_rows(problems, fits)]
        for name, idx in cache.blocks(run, kind, seed):
            units.append(
                {
                    "model": model,
                    "task": draw.to_dict(),
                    "sweep": config.to_dict(),
                    "fits": fits,
                    "kind": kind,
                    "name": name,
                    "rows": idx,
                    "cache": {"shard_size": cache.shard_size},
                    "threads": threads,
                }
            )
    return units


def collect_block(unit: dict[str, Any]) -> dict[str, Any]:
    """One residual shard of a sweep, computed (or found valid) and written into the cache folder ``unit["cache"]["folder"]``.

    Returns:
        The shard's name and the cache's counts of problems ``read`` and ``computed``.
    """
    import warnings

    import torch

    from lens_digits.problems.targets import encode_for_model
    from lens_digits.problems.tasks import TaskConfig, generate_problems
    from lens_digits.residuals.cache import ResidualCache
    from lens_digits.runs.config import SweepConfig
    from lens_digits.runs.draw import residual_rows

    threads = torch.get_num_threads()
    torch.set_num_threads(int(unit["threads"]))
    try:
        task, config = TaskConfig.from_dict(unit["task"]), SweepConfig.from_dict(unit["sweep"])
        settings = unit["cache"]
        adapter, base = _model_and_key(unit["model"], unit.get("origin"), config.chat, config.prepend_bos, settings["shard_size"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            problems = generate_problems(task)
        run = [problems[i] for i in residual_rows(problems, unit["fits"])]
        chosen = [run[i] for i in unit["rows"]]
        encoded = encode_for_model(adapter, chosen, prepend_bos=config.prepend_bos, chat=config.chat)
        cache = ResidualCache(settings["folder"], read_also=settings.get("read_also", ()), shard_size=settings["shard_size"])
        key = {**base, "task": task.to_dict()}
        cache.block(adapter, key, unit["name"], chosen, encoded, unit["kind"] != "first", config.batch_size, "cpu")
        return {"name": unit["name"], **cache.counts}
    finally:
        torch.set_num_threads(threads)


def shard_on_worker(unit: dict[str, Any]) -> dict[str, Any]:
    """One residual shard computed on a Ray worker into a private temporary cache, sent back as its two files.

    Returns:
        The shard's name, its files (:func:`pack`: ``NAME.safetensors`` and ``NAME.json``), ``node`` and the cache's counts.
    """
    tmp = scratch_folder("shard")
    try:
        counts = collect_block({**unit, "cache": {**unit["cache"], "folder": str(tmp), "read_also": []}})
        return {**pack(tmp), **counts, "node": node_id()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _whole(folder: Path, name: str) -> bool:
    """Whether ``folder`` holds shard ``name`` whole (its sidecar's checksum holds): it is not sent to the cluster.

    Returns:
        True if both files are there and the tensors match the sidecar's SHA-256.
    """
    try:
        meta = json.loads((folder / f"{name}.json").read_text())
        return isinstance(meta, dict) and hashlib.sha256((folder / f"{name}.safetensors").read_bytes()).hexdigest() == meta.get("sha256")
    except (OSError, ValueError):
        return False


def _write_shard(cache: Any, result: dict[str, Any]) -> dict[str, Any]:
    """Write a shard a worker sent back into the cache: checked, tensors first, then the sidecar (atomic writes).

    Returns:
        The shard's name, counts and node, without its bytes.

    Raises:
        ClusterError: The files are damaged, or the sidecar's checksum does not match the tensors.
    """
    from lens_digits.storage import atomic

    name = result["name"]
    files = result["files"]
    data, sidecar = files.get(f"{name}.safetensors"), files.get(f"{name}.json")
    if data is None or sidecar is None:
        raise ClusterError(f"the Ray worker sent back no whole residual shard {name}; run again")
    for rel in (f"{name}.safetensors", f"{name}.json"):
        if hashlib.sha256(files[rel]).hexdigest() != result["sha256"].get(rel):
            raise ClusterError(f"residual shard {rel} came back from a Ray worker damaged (its SHA-256 does not match); run again")
    if json.loads(sidecar).get("sha256") != hashlib.sha256(data).hexdigest():
        raise ClusterError(f"residual shard {name} came back from a Ray worker with tensors its sidecar does not describe; run again")
    cache._ensure_folder()
    atomic.write_file(cache.folder / f"{name}.safetensors", data)
    atomic.write_file(cache.folder / f"{name}.json", sidecar)
    return {k: v for k, v in result.items() if k not in ("files", "sha256")}


def prefill_with_ray(
    model: dict[str, Any],
    task: Any,
    config: Any,
    cache: Any,
    *,
    address: str | None = None,
    progress: bool = False,
    threads: int | None = None,
    gpus: float | None = None,
    resources: dict[str, float] | None = None,
) -> Units:
    """Compute a sweep's missing residual shards as Ray tasks (one per shard) and write them into ``cache``; the sweep reads them back.

    Shards already whole in the cache (or the run directory it replaces) are not sent. ``threads``, ``gpus``, ``resources``: what each
    task asks for (see :func:`lens_digits.runs.executors.run_ray`).

    Returns:
        One summary per shard sent: its ``name``, the counts and the Ray ``node`` that computed it.

    Raises:
        LensDigitsError: Ray is not installed, or the cluster cannot be reached.
        ClusterError: No node can run a shard, a node left, or a shard came back damaged.
    """
    import torch

    from lens_digits.runs.executors import run_ray

    units = shard_units(model, task, config, cache, torch.get_num_threads())
    units = [u for u in units if not any(_whole(f, u["name"]) for f in (cache.folder, *cache.read_also))]
    if not units:
        return []
    shipped: dict[str, dict[str, Any]] = {}

    def prepare(ray: Any) -> None:
        from lens_digits.runs.remote import model_origin

        origin = model_origin(ray, model["model"], shipped)
        for unit in units:
            unit["origin"] = origin

    return run_ray(
        units,
        address=address,
        progress=progress,
        work=shard_on_worker,
        on_result=lambda unit, result: _write_shard(cache, result),
        threads=threads,
        gpus=gpus if gpus is not None else float(model.get("gpus", 0)),
        resources=resources,
        prepare=prepare,
    )
