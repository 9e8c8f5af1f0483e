"""Executors: who runs a study's units. Each takes JSON-ready units and calls :func:`lens_digits.study.run_unit` on them.

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
import sys
from collections.abc import Callable
from typing import Any

from lens_digits.errors import LensDigitsError

__all__ = ["EXECUTORS", "executor_named", "run_local", "run_ray"]

Units = list[dict[str, Any]]


def run_local(units: Units, *, progress: bool = False) -> Units:
    """Every unit, in order, in this process."""
    from lens_digits.study import run_unit

    out = []
    for i, unit in enumerate(units, start=1):
        if progress:
            print(f"[{i}/{len(units)}] {unit['model']['name']} / {unit['task_name']} -> {unit['out']}", flush=True)
        out.append(run_unit(unit))
    return out


def local_ray_settings() -> dict[str, Any]:
    """``ray.init`` arguments (and environment) for a cluster on this machine that talks to nothing else.

    Ray binds its servers to the node's address; with the loopback address as
    the node's (and clusters across machines turned off for this process) every
    server listens on 127.0.0.1 only. No dashboard, no usage statistics.
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
    return {"_node_ip_address": "127.0.0.1", "include_dashboard": False, "log_to_driver": False, "configure_logging": False}


def run_ray(units: Units, *, address: str | None = None, progress: bool = False) -> Units:
    """One Ray task per unit; results in the units' order.

    Raises:
        LensDigitsError: Ray is not installed, or the cluster cannot be reached.
    """
    local = None if address else local_ray_settings()  # before Ray is imported: it reads the settings then
    try:
        import ray
    except ImportError:
        raise LensDigitsError(
            "--executor ray needs Ray, an optional extra: pip install 'lens-digits[ray]' (from a checkout: pip install -e '.[ray]')"
        ) from None
    from lens_digits.study import run_unit

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
        task = ray.remote(run_unit)
        refs = [task.options(num_cpus=int(u["threads"]), num_gpus=float(u["model"].get("gpus", 0)), max_retries=1).remote(u) for u in units]
        if progress:
            print(f"{len(refs)} units sent to Ray ({ray.cluster_resources().get('CPU', 0):g} CPUs in the cluster)", flush=True)
        return list(ray.get(refs))
    finally:
        if started:
            ray.shutdown()


EXECUTORS: dict[str, Callable[..., Units]] = {"local": run_local, "ray": run_ray}


def executor_named(name: str, *, address: str | None = None, progress: bool = False) -> Callable[[Units], Units]:
    """The executor ``name`` with its settings bound."""
    if name not in EXECUTORS:
        raise LensDigitsError(f"unknown executor {name!r}; choose {', '.join(EXECUTORS)}")
    if name == "local":
        if address:
            raise LensDigitsError("--address is for --executor ray")
        return lambda units: run_local(units, progress=progress)
    return lambda units: run_ray(units, address=address, progress=progress)
