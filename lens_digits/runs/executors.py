"""Executors: who runs a study's units or a run's residual shards. Each takes JSON-ready units and the work to do on each.

- ``local``: one after another, in this process.
- ``ray``: one Ray task per unit, asking for the unit's CPU threads and its
  model's GPUs, on the cluster at ``address`` (or the one this process already
  joined, or a local one). Every node must have ``lens-digits`` (and the
  models, for local folders) installed the same way, and see the study folder
  at the same path (a shared filesystem), since each task writes its own run
  directory there. The driver then reads the run directories back, so a study
  gives the same bytes whichever executor ran it.

A local cluster started here listens on the loopback address only, sends no
usage statistics and writes nothing into the home folder.
"""

import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from lens_digits.errors import LensDigitsError

__all__ = ["EXECUTORS", "collect_block", "executor_named", "prefill_with_ray", "run_local", "run_ray"]

Units = list[dict[str, Any]]


def run_local(units: Units, work: Callable[[dict[str, Any]], dict[str, Any]], *, progress: bool = False) -> Units:
    """``work(unit)`` for every unit, in order, in this process; a unit that fails gives its :func:`failure` summary.

    Returns:
        One summary per unit, in the units' order.
    """
    out = []
    for i, unit in enumerate(units, start=1):
        if progress:
            print(f"[{i}/{len(units)}] {unit['model']['name']} / {unit['task_name']} -> {unit['out']}", flush=True)
        try:
            out.append(work(unit))
        except (LensDigitsError, OSError) as e:  # this unit's own problem: the others still run, the study says which failed
            out.append(failure(unit, e))
    return out


def failure(unit: dict[str, Any], e: BaseException) -> dict[str, Any]:
    """The summary of a unit that failed: its folder and the error, on one line.

    Returns:
        ``{"out": ..., "ran": False, "error": ...}``: the unit's folder and the error's message.
    """
    from lens_digits.errors import first_line, os_error_text

    text = os_error_text(e) if isinstance(e, OSError) and e.errno is not None else first_line(e)
    return {"out": unit["out"], "ran": False, "error": text}


def local_ray_settings() -> dict[str, Any]:
    """``ray.init`` arguments (and environment) for a cluster on this machine that talks to nothing else.

    Ray binds its servers to the node's address; with the loopback address as
    the node's (and clusters across machines turned off for this process) every
    server listens on 127.0.0.1 only. No dashboard, no usage statistics.

    Returns:
        The keyword arguments of ``ray.init``; ``_temp_dir`` is a new private folder, for the caller to remove.
    """
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # A token for this cluster alone, passed to its processes by the environment (Ray would otherwise write one
    # into ~/.ray).
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    # Ray's switch for "this machine only": the node's address is then the loopback one (Ray otherwise swaps
    # 127.0.0.1 for the machine's network address). Ray reads it when imported, so an imported Ray gets it too.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
        setattr(constants, "ENABLE_RAY_CLUSTER", False)  # noqa: B010 - a module attribute of Ray's
    # Ray's session files (sockets, logs, spilled objects) go into a folder of this cluster's own, private (0700) and removed
    # with it (see run_ray), instead of a shared /tmp/ray that outlives the run.
    temp = tempfile.mkdtemp(prefix="ray-lens-digits-")
    return {
        "_node_ip_address": "127.0.0.1",
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
        "_temp_dir": temp,
    }


def run_ray(
    units: Units, *, address: str | None = None, progress: bool = False, work: Callable[..., Any] | None = None, keep_going: bool = False
) -> Units:
    """One Ray task per unit (``work(unit)``: a study unit, or a residual shard); results in the units' order.

    ``keep_going``: a unit that fails gives its :func:`failure` summary, and the
    others still run (a study); otherwise the first failure is raised.

    Returns:
        What ``work`` returned for each unit (or its :func:`failure` summary), in the units' order.

    Raises:
        LensDigitsError: Ray is not installed, or the cluster cannot be reached.
    """
    local = None if address else local_ray_settings()  # before Ray is imported: it reads the settings then
    try:
        return _run_ray(units, address, local, progress, work, keep_going)
    finally:
        if local is not None:  # the cluster's private session folder, used or not
            shutil.rmtree(local["_temp_dir"], ignore_errors=True)


def _run_ray(
    units: Units, address: str | None, local: dict[str, Any] | None, progress: bool, work: Callable[..., Any] | None, keep_going: bool
) -> Units:
    try:
        import ray
    except ImportError:
        raise LensDigitsError(
            "--executor ray needs Ray, an optional extra: pip install 'lens-digits[ray]' (from a checkout: pip install -e '.[ray]')"
        ) from None
    if work is None:
        raise LensDigitsError("run_ray needs the work to do for each unit (for a study: lens_digits.runs.study.run_unit)")
    started = False
    if not ray.is_initialized():
        try:
            if local is None:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            else:
                ray.init(**local)
        except (ConnectionError, RuntimeError) as e:
            raise LensDigitsError(f"cannot start or reach the Ray cluster {address or '(local)'}: {e}") from None
        started = True
    try:
        task = ray.remote(work)
        refs = [task.options(num_cpus=int(u["threads"]), num_gpus=float(u["model"].get("gpus", 0)), max_retries=1).remote(u) for u in units]
        if progress:
            print(f"{len(refs)} units sent to Ray ({ray.cluster_resources().get('CPU', 0):g} CPUs in the cluster)", flush=True)
        if not keep_going:
            return list(ray.get(refs))
        out = []
        for unit, ref in zip(units, refs, strict=True):
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if not isinstance(cause, (LensDigitsError, OSError)):
                    raise
                out.append(failure(unit, cause))
        return out
    finally:
        if started:
            ray.shutdown()


EXECUTORS: dict[str, Callable[..., Units]] = {"local": run_local, "ray": run_ray}


def executor_named(
    name: str, work: Callable[[dict[str, Any]], dict[str, Any]], *, address: str | None = None, progress: bool = False
) -> Callable[[Units], Units]:
    """The executor ``name`` running ``work`` on each unit, with its settings bound (a failing unit does not stop the others).

    Returns:
        A function from units to their summaries.

    Raises:
        LensDigitsError: An unknown executor, or ``address`` without Ray.
    """
    if name not in EXECUTORS:
        raise LensDigitsError(f"unknown executor {name!r}; choose {', '.join(EXECUTORS)}")
    if name == "local":
        if address:
            raise LensDigitsError("--address is for --executor ray")
        return lambda units: run_local(units, work, progress=progress)
    return lambda units: run_ray(units, address=address, progress=progress, work=work, keep_going=True)


# ---- one run's residual shards, spread over a Ray cluster -------------------------------------------

_MODELS: dict[tuple[str, str | None, str | None], tuple[Any, dict[Any, dict[str, Any]]]] = {}
"""One model per Ray worker process and setting, with the cache keys made for it (its weights fingerprint and
tokenizer hash are computed once per worker, not once per shard)."""


def _model_and_key(spec: dict[str, Any], chat: bool, prepend_bos: bool | None, shard_size: int) -> tuple[Any, dict[str, Any]]:
    from lens_digits.model.adapter import ModelAdapter
    from lens_digits.model.loading import load_model
    from lens_digits.residuals.cache import sweep_key

    which = (spec["model"], spec.get("dtype"), spec.get("device"))
    if which not in _MODELS:
        _MODELS.clear()
        model = load_model(spec["model"], device=spec.get("device"), dtype=spec.get("dtype"), progress=False)
        _MODELS[which] = (ModelAdapter.wrap(model), {})
    adapter, keys = _MODELS[which]
    if (chat, prepend_bos, shard_size) not in keys:
        keys[(chat, prepend_bos, shard_size)] = sweep_key(adapter, chat, prepend_bos, shard_size)
    return adapter, keys[(chat, prepend_bos, shard_size)]


def shard_units(model: dict[str, Any], task: Any, config: Any, cache: Any, threads: int) -> Units:
    """One unit per residual shard of a sweep (``lens-digits run --executor ray``): what the sweep itself would collect.

    Returns:
        The JSON-ready units, per seed: the model, task and sweep settings, the shard's name and rows, the cache's settings and ``threads``.
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
                    "cache": {
                        "folder": str(cache.folder),
                        "read_also": [str(f) for f in cache.read_also],
                        "discard_other_settings": cache.discard_other_settings,
                        "shard_size": cache.shard_size,
                    },
                    "threads": threads,
                }
            )
    return units


def collect_block(unit: dict[str, Any]) -> dict[str, Any]:
    """One residual shard of a sweep, computed (or found valid) and written into the cache folder: a Ray task's work.

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
        adapter, base = _model_and_key(unit["model"], config.chat, config.prepend_bos, settings["shard_size"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            problems = generate_problems(task)
        run = [problems[i] for i in residual_rows(problems, unit["fits"])]
        chosen = [run[i] for i in unit["rows"]]
        encoded = encode_for_model(adapter, chosen, prepend_bos=config.prepend_bos, chat=config.chat)
        cache = ResidualCache(
            settings["folder"],
            read_also=settings["read_also"],
            discard_other_settings=settings["discard_other_settings"],
            shard_size=settings["shard_size"],
        )
        key = {**base, "task": task.to_dict()}
        cache.block(adapter, key, unit["name"], chosen, encoded, unit["kind"] != "first", config.batch_size, "cpu")
        return {"name": unit["name"], **cache.counts}
    finally:
        torch.set_num_threads(threads)


def prefill_with_ray(
    model: dict[str, Any], task: Any, config: Any, cache: Any, *, address: str | None = None, progress: bool = False
) -> Units:
    """Compute a sweep's missing residual shards as Ray tasks (one per shard); the sweep then reads them all back.

    Returns:
        One :func:`collect_block` result per shard.

    Raises:
        LensDigitsError: Ray is not installed, or the cluster cannot be reached.
    """
    import torch

    units = shard_units(model, task, config, cache, torch.get_num_threads())
    gpus = float(model.get("gpus", 0))
    for unit in units:
        unit["model"] = {**unit["model"], "gpus": gpus}
    return run_ray(units, address=address, progress=progress, work=collect_block)
