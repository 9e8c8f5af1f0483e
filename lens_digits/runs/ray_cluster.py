"""Units on a Ray cluster: what each asks for, whether some node can give it, and a bounded number sent at a time.

- **Fit**: a unit asks for its CPU threads, its GPUs and any custom resources
  (``--resource NAME=N``). Before anything is sent, the request is checked
  against the cluster's live nodes: if no node offers it, the run stops at once
  with an error naming the request and the largest node. Threads the user did
  not ask for (``--threads``) are fitted instead: lowered to the CPUs of the
  largest node that has everything else.
- **Bounded**: at most as many units are in Ray as the nodes can run at once
  (their *slots*), so results come back about as fast as they are written and
  the driver holds a few of them at a time, however many units there are.
- **Faults**: a worker process that dies is retried by Ray (``MAX_RETRIES``);
  a task that keeps failing is reported. When no live node can run the units
  left (the node that could has left the cluster), the run stops after
  ``NODE_TIMEOUT_S`` with an error saying so, instead of waiting forever.
"""

import math
import time
from collections.abc import Callable
from typing import Any

from lens_digits.errors import ClusterError, LensDigitsError, first_line

__all__ = ["MAX_RETRIES", "NODE_TIMEOUT_S", "alive_nodes", "describe", "dispatch", "fit_request", "slots"]

NODE_TIMEOUT_S = 60.0
"""Seconds the driver waits while no live node can run the units left (a node left the cluster) before it stops."""
MAX_RETRIES = 3
"""Times Ray runs a unit again after its worker process or node died."""
POLL_S = 0.5

Units = list[dict[str, Any]]


def alive_nodes(ray: Any) -> list[dict[str, float]]:
    """The resources of every live node of the cluster this process joined.

    Returns:
        One ``{resource: amount}`` per live node.
    """
    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def describe(resources: dict[str, float]) -> str:
    """A request or a node's resources in words: ``CPU 2, GPU 0, memory 3.1 GiB, worker 1``.

    Returns:
        The resources that matter for fitting, comma-separated (Ray's per-node labels and object store left out).
    """
    shown = {"CPU": resources.get("CPU", 0), "GPU": resources.get("GPU", 0)}
    for k, v in sorted(resources.items()):
        if k not in shown and not k.startswith("node:") and k not in ("object_store_memory", "accelerator_type"):
            shown[k] = v
    return ", ".join(f"{k} {v / 2**30:.1f} GiB" if k == "memory" else f"{k} {v:g}" for k, v in shown.items())


def _fits(request: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(k, 0) >= v for k, v in request.items() if v > 0)


def _largest(nodes: list[dict[str, float]]) -> dict[str, float]:
    return max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0), n.get("memory", 0))) if nodes else {}


def fit_request(request: dict[str, float], nodes: list[dict[str, float]], *, fit_cpus: bool) -> dict[str, float]:
    """``request`` if some node offers it; with ``fit_cpus``, its CPUs lowered to what the largest node able to run the rest has.

    Returns:
        The request to send (the same, or with fewer CPUs).

    Raises:
        ClusterError: No node offers the request (and fitting CPUs does not help), or the cluster has no live node.
    """
    if not nodes:
        raise ClusterError("the Ray cluster has no live node; start one (ray start --head) or check --address")
    if any(_fits(request, n) for n in nodes):
        return request
    if fit_cpus:
        rest = {k: v for k, v in request.items() if k != "CPU"}
        cpus = [int(n.get("CPU", 0)) for n in nodes if _fits(rest, n) and n.get("CPU", 0) >= 1]
        if cpus:
            return {**request, "CPU": float(min(int(request.get("CPU", 1)), max(cpus)))}
    raise ClusterError(
        f"each unit asks Ray for {describe(request)}, which no node of the cluster offers (largest node: {describe(_largest(nodes))}); "
        "ask for less (--threads N, --gpus N, --resource NAME=N) or add a node that has it"
    )


def slots(request: dict[str, float], nodes: list[dict[str, float]]) -> int:
    """How many units of ``request`` the nodes can run at once.

    Returns:
        The sum over nodes of how many requests each holds (at least 1).
    """
    total = 0
    for node in nodes:
        asked = [node.get(k, 0) / v for k, v in request.items() if v > 0]
        total += math.floor(min(asked)) if asked else 1
    return max(1, total)


def dispatch(
    ray: Any,
    units: Units,
    work: Callable[[dict[str, Any]], Any],
    requests: list[dict[str, float]],
    *,
    on_result: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None,
    on_failure: Callable[[dict[str, Any], BaseException], dict[str, Any]] | None = None,
    progress: bool = False,
    max_in_flight: int | None = None,
) -> list[Any]:
    """Run ``work(unit)`` as a Ray task per unit, at most ``max_in_flight`` at once, handing each result to ``on_result`` as it arrives.

    Args:
        ray: The imported ``ray`` module, joined to a cluster.
        units: JSON-ready units; each is sent as it is (it names no path of this machine).
        work: The task's function.
        requests: What each unit's task asks for (``CPU``, ``GPU``, custom resources), already fitted (:func:`fit_request`).
        on_result: Called here with each unit and its task's result, in the order they finish; what it returns is the unit's entry.
        on_failure: For a unit that failed (its own error, its worker died more than ``MAX_RETRIES`` times, or ``on_result`` failed
            with a :class:`LensDigitsError` or ``OSError``): what it returns is the unit's entry, and the others go on. None: raised.
        progress: Print how many units wait, run and are done whenever that changes.
        max_in_flight: Tasks in Ray at once (default: the nodes' :func:`slots`).

    Returns:
        One entry per unit, in the units' order.

    Raises:
        ClusterError: No live node can run the units left for ``NODE_TIMEOUT_S`` seconds, or a worker died too often (and no
            ``on_failure``).
        LensDigitsError: A unit's own error, or ``on_result``'s (without ``on_failure``).
        OSError: ``on_result`` could not write a result (without ``on_failure``).
    """
    task = ray.remote(work)
    nodes = alive_nodes(ray)
    limit = max_in_flight or max(slots(r, [n for n in nodes if _fits(r, n)]) for r in requests)
    out: list[Any] = [None] * len(units)
    waiting = list(range(len(units)))
    running: dict[Any, int] = {}
    done = failed = 0
    shown: tuple[int, ...] = ()
    stuck_since: float | None = None
    try:
        while waiting or running:
            while waiting and len(running) < limit:
                i = waiting.pop(0)
                running[task.options(**_options(requests[i])).remote(units[i])] = i
            if progress and (len(waiting), len(running), done, failed) != shown:
                shown = (len(waiting), len(running), done, failed)
                counts = f"ray: {len(waiting)} waiting, {len(running)} running, {done} done"
                print(counts + (f", {failed} failed" if failed else ""), flush=True)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            if not ready:
                left = [requests[i] for i in (*waiting, *running.values())]
                stuck_since = _check_nodes(ray, left, stuck_since)
                continue
            stuck_since = None
            for ref in ready:
                i = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as e:
                    cause = _cause(ray, e)
                    if on_failure is None:
                        if isinstance(cause, LensDigitsError):
                            raise cause from None
                        raise
                    out[i] = on_failure(units[i], cause)
                    failed += 1
                    continue
                try:
                    out[i] = on_result(units[i], result) if on_result is not None else result
                except (LensDigitsError, OSError) as e:  # writing this unit's result failed (a full disk, a link where it goes)
                    if on_failure is None:
                        raise
                    out[i] = on_failure(units[i], e)
                    failed += 1
                    continue
                finally:
                    del result  # one result at a time is held here
                done += 1
        if progress:
            print(f"ray: {done} done" + (f", {failed} failed" if failed else ""), flush=True)
        return out
    finally:
        for ref in running:  # stopped early: nothing keeps running for a driver that is gone
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or its node is gone
                pass


def _options(request: dict[str, float]) -> dict[str, Any]:
    """Ray's task options for a request.

    Returns:
        ``num_cpus``, ``num_gpus``, ``max_retries`` and the custom ``resources``.
    """
    options: dict[str, Any] = {"num_cpus": request.get("CPU", 1), "num_gpus": request.get("GPU", 0), "max_retries": MAX_RETRIES}
    custom = {k: v for k, v in request.items() if k not in ("CPU", "GPU") and v > 0}
    if custom:
        options["resources"] = custom
    return options


def _cause(ray: Any, e: BaseException) -> BaseException:
    """The error a failed task stands for: the unit's own error, or a worker that kept dying, in one line.

    Returns:
        The unit's own exception (a task error), or a :class:`ClusterError` naming how the worker or node died.
    """
    if isinstance(e, ray.exceptions.RayTaskError):
        cause = getattr(e, "cause", None)
        if isinstance(cause, (LensDigitsError, OSError)):
            return cause
        return ClusterError(f"the unit failed on its Ray worker: {first_line(cause if cause is not None else e)}")
    return ClusterError(f"the unit's Ray worker died {MAX_RETRIES + 1} times ({type(e).__name__}: {first_line(e)})")


def _check_nodes(ray: Any, left: list[dict[str, float]], since: float | None) -> float | None:
    """While nothing finishes: whether some live node can still run a unit; if none has for ``NODE_TIMEOUT_S``, stop.

    Returns:
        When the cluster was first found unable to run a unit (None: it can).

    Raises:
        ClusterError: No live node has been able to run a unit for ``NODE_TIMEOUT_S`` seconds.
    """
    nodes = alive_nodes(ray)
    if any(_fits(r, n) for r in left for n in nodes):
        return None
    now = time.monotonic()
    if since is None:
        return now
    if now - since >= NODE_TIMEOUT_S:
        raise ClusterError(
            f"no live node of the Ray cluster can run a unit ({describe(left[0])}) any more: a node left the cluster; "
            f"{len(left)} unit(s) not done after waiting {NODE_TIMEOUT_S:g} s (largest node now: {describe(_largest(nodes))}). "
            "Run the same command again once such a node has joined: finished units are kept"
        )
    return since
