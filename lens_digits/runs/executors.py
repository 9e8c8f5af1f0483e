"""Executors: who runs a study's units or a run's residual shards. Each takes JSON-ready units and the work to do on each.

- ``local``: one after another, in this process.
- ``ray``: one Ray task per unit, asking for the unit's CPU threads, its
  model's GPUs and any custom resources, on the cluster at ``address`` (or the
  one this process already joined, or a local one), a bounded number at a time
  (:mod:`lens_digits.runs.ray_cluster`). Nodes share no disk with the driver:
  a task sends back the files it made and the driver writes them
  (:mod:`lens_digits.runs.remote`), so a study or a run gives the same bytes
  whichever executor ran it.

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

__all__ = ["EXECUTORS", "executor_named", "local_ray_settings", "ray_options", "run_local", "run_ray"]

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


def _loopback_only() -> None:
    """Keep this process's Ray on the loopback address: Ray otherwise swaps 127.0.0.1 for the machine's network address.

    Ray reads the switch when imported, so an imported Ray gets it too.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
        setattr(constants, "ENABLE_RAY_CLUSTER", False)  # noqa: B010 - a module attribute of Ray's


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
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # said, so Ray keeps token auth on without a notice on every run
    _loopback_only()
    # Ray's session files (sockets, logs, spilled objects) go into a folder of this cluster's own, private (0700) and removed
    # with it (see run_ray), instead of a shared /tmp/ray that outlives the run.
    temp = tempfile.mkdtemp(prefix="ray-lens-digits-")
    return {
        "_node_ip_address": "127.0.0.1",
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
        "_temp_dir": temp,
        # The workers' temporary files (a unit's folder, the copies of shipped checkpoints) go there too, removed with it.
        "runtime_env": {"env_vars": {"TMPDIR": temp}},
    }


def run_ray(
    units: Units,
    *,
    address: str | None = None,
    progress: bool = False,
    work: Callable[..., Any] | None = None,
    keep_going: bool = False,
    on_result: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None,
    threads: int | None = None,
    gpus: float | None = None,
    resources: dict[str, float] | None = None,
    max_in_flight: int | None = None,
    prepare: Callable[[Any], None] | None = None,
) -> list[Any]:
    """One Ray task per unit (``work(unit)``: a study unit, or a residual shard); results in the units' order.

    Each task asks for ``threads`` CPUs (default: the units' own, fitted to the largest node), ``gpus`` GPUs (default: the
    units' model's) and the custom ``resources``; a request no node offers is an error before anything is sent (see
    :mod:`lens_digits.runs.ray_cluster`). At most ``max_in_flight`` tasks (default: what the nodes run at once) are in Ray.

    Args:
        units: JSON-ready units.
        address: A running cluster's ``HOST:PORT``; None: the cluster this process joined, else a local one (loopback only).
        progress: Print units waiting, running and done.
        work: The task's function.
        keep_going: A unit that fails gives its :func:`failure` summary, and the others still run (a study); otherwise the first
            failure is raised.
        on_result: Called here with each unit and its result as it arrives (to write it); its return value is the unit's entry.
        threads: CPU threads per unit (torch's, and what the task asks Ray for).
        gpus: GPUs per unit.
        resources: Custom Ray resources per unit (``{"worker": 1}``: only nodes started with ``--resources '{"worker": 1}'``).
        max_in_flight: Tasks in Ray at once.
        prepare: Called with the ``ray`` module once the cluster is joined, before the units are fitted and sent (to put what the
            units share into the object store).

    Returns:
        What ``work`` returned for each unit, through ``on_result`` if given (or its :func:`failure` summary), in the units' order.

    Raises:
        LensDigitsError: Ray is not installed, or the cluster cannot be reached.
        ClusterError: No node can run a unit, a node left, or a worker kept dying (see :func:`lens_digits.runs.ray_cluster.dispatch`).
    """
    local = None if address else local_ray_settings()  # before Ray is imported: it reads the settings then
    if address and address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
        _loopback_only()  # a cluster on this machine's loopback address, as Ray was told
    try:
        return _run_ray(
            units, address, local, progress, work, keep_going, on_result, threads, gpus, dict(resources or {}), max_in_flight, prepare
        )
    finally:
        if local is not None:  # the cluster's private session folder, used or not
            shutil.rmtree(local["_temp_dir"], ignore_errors=True)


def _run_ray(
    units: Units,
    address: str | None,
    local: dict[str, Any] | None,
    progress: bool,
    work: Callable[..., Any] | None,
    keep_going: bool,
    on_result: Callable[[dict[str, Any], Any], dict[str, Any]] | None,
    threads: int | None,
    gpus: float | None,
    resources: dict[str, float],
    max_in_flight: int | None,
    prepare: Callable[[Any], None] | None,
) -> list[Any]:
    try:
        import ray
    except ImportError:
        raise LensDigitsError(
            "--executor ray needs Ray, an optional extra: pip install 'lens-digits[ray]' (from a checkout: pip install -e '.[ray]')"
        ) from None
    if work is None:
        raise LensDigitsError("run_ray needs the work to do for each unit (for a study: lens_digits.runs.study.run_unit)")
    from lens_digits.runs.ray_cluster import alive_nodes, describe, dispatch, fit_request

    started = False
    if not ray.is_initialized():
        try:
            if local is None:
                loopback: dict[str, Any] = {}
                if address and address.startswith(("127.0.0.1:", "localhost:")):
                    loopback["_node_ip_address"] = "127.0.0.1"
                ray.init(address=address, log_to_driver=False, configure_logging=False, **loopback)
            else:
                ray.init(**local)
        except (ConnectionError, RuntimeError) as e:
            raise LensDigitsError(f"cannot start or reach the Ray cluster {address or '(local)'}: {e}") from None
        started = True
    try:
        if not units:
            return []
        if prepare is not None:
            prepare(ray)
        nodes, fitted = alive_nodes(ray), {}
        requests = []
        for u in units:
            asked = {
                "CPU": float(threads if threads is not None else int(u["threads"])),
                "GPU": float(gpus if gpus is not None else float(u["model"].get("gpus", 0))),
                **{k: float(v) for k, v in resources.items()},
            }
            which = repr(sorted(asked.items()))
            if which not in fitted:
                fitted[which] = fit_request(asked, nodes, fit_cpus=threads is None)
                if progress:
                    cut = " (fitted to the largest node; --threads N to choose)" if fitted[which] != asked else ""
                    print(f"ray: units asking for {describe(fitted[which])}{cut}", flush=True)
            requests.append(fitted[which])
        units = [{**u, "threads": int(r["CPU"])} for u, r in zip(units, requests, strict=True)]
        return dispatch(
            ray,
            units,
            work,
            requests,
            on_result=on_result,
            on_failure=failure if keep_going else None,
            progress=progress,
            max_in_flight=max_in_flight,
        )
    finally:
        if started:
            ray.shutdown()


EXECUTORS: dict[str, Callable[..., Units]] = {"local": run_local, "ray": run_ray}


def ray_options(executor: str, address: str | None, threads: int | None, gpus: float | None, resources: list[str]) -> dict[str, Any]:
    """The command line's ``--threads``, ``--gpus`` and ``--resource NAME=N``, checked, as :func:`run_ray` keywords.

    Returns:
        ``{"threads": ..., "gpus": ..., "resources": {NAME: N}}``.

    Raises:
        LensDigitsError: A value out of range, a resource not written ``NAME=N``, or a Ray flag without ``--executor ray``.
    """
    if executor != "ray" and (address or gpus is not None or resources):
        flag = "--address" if address else "--gpus" if gpus is not None else "--resource"
        raise LensDigitsError(f"{flag} is for --executor ray")
    if threads is not None and threads < 1:
        raise LensDigitsError(f"--threads must be 1 or more, got {threads}")
    if gpus is not None and not gpus >= 0:
        raise LensDigitsError(f"--gpus must be 0 or more, got {gpus}")
    parsed: dict[str, float] = {}
    for text in resources:
        name, _, amount = text.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not name.strip() or not value > 0:
            raise LensDigitsError(f"--resource {text!r}: write NAME=N with N a positive number, e.g. --resource worker=1")
        parsed[name.strip()] = value
    return {"threads": threads, "gpus": gpus, "resources": parsed}


def executor_named(
    name: str, work: Callable[[dict[str, Any]], dict[str, Any]], *, address: str | None = None, progress: bool = False, **ray: Any
) -> Callable[[Units], Units]:
    """The executor ``name`` running ``work`` on each unit, with its settings bound (a failing unit does not stop the others).

    ``ray``: further keywords of :func:`run_ray` (``threads``, ``gpus``, ``resources``, ``on_result``, ...).

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
    return lambda units: run_ray(units, address=address, progress=progress, work=work, keep_going=True, **ray)
