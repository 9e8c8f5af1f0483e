"""Work on Ray nodes that share no disk with the driver: what is sent to a worker, and what comes back.

A unit sent to a worker names no path of the driver's machine. The worker runs
it in a private temporary folder of its own and sends back the files it made
(a study unit's run directory, or one residual shard's tensors and sidecar),
each with its SHA-256; the folder is removed before the task returns. The
driver checks every checksum and writes the files itself, with the same atomic
writes as a local run (a run directory through a
:class:`~lens_digits.storage.reservation.Reservation`, a shard's tensors before
the sidecar that makes it valid), as they arrive.

Where the model comes from, per model (:func:`model_origin`):

- a **hub name** is loaded on the worker, from its own hub cache;
- a **built-in model** is loaded from the worker's own installed package;
- a **checkpoint folder of the driver** is read here once, put into Ray's object
  store once, and copied by each node that needs it into its temporary folder
  (``$TMPDIR/lens-digits-models-UID/DIGEST/NAME``, kept there for the next unit),
  once per node. The model then carries the driver's path as its name, so its
  run record and cache keys are those of a local run.
"""

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lens_digits.errors import ClusterError
from lens_digits.residuals.assembly import process_alive

__all__ = ["load_unit_model", "materialize", "model_origin", "node_id", "pack", "scratch_folder", "unpack"]


# ---- files as values ------------------------------------------------------------------------------


def pack(folder: Path) -> dict[str, Any]:
    """Every regular file under ``folder``, as bytes with its SHA-256 (what travels through Ray's object store).

    Returns:
        ``{"files": {relative path: bytes}, "sha256": {relative path: hex digest}}``, in sorted order.

    Raises:
        ClusterError: ``folder`` holds a symbolic link (never followed, never sent).
    """
    files: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise ClusterError(f"{str(path)!r} is a symbolic link; only regular files are sent between Ray nodes: replace it by the file")
        if path.is_file():
            files[path.relative_to(folder).as_posix()] = path.read_bytes()
    return {"files": files, "sha256": {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}}


def unpack(packed: dict[str, Any], into: Path) -> None:
    """Write the files of :func:`pack` under ``into``, each checked against its SHA-256 first.

    Raises:
        ClusterError: A file's bytes do not match their checksum, or a name would leave ``into``.
    """
    files, sums = packed["files"], packed["sha256"]
    for rel, data in files.items():  # every file checked before any is written
        if hashlib.sha256(data).hexdigest() != sums.get(rel):
            raise ClusterError(f"{rel} came back from a Ray worker damaged (its SHA-256 does not match); run again to redo the unit")
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise ClusterError(f"a Ray worker sent a file named {rel!r}, outside its folder; nothing was written")
    for rel, data in files.items():
        target = into / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


# ---- models on the workers ------------------------------------------------------------------------


def model_origin(ray: Any, name: str, shipped: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Where a worker gets model ``name`` (a study's or run's model string) from; a local folder is put into the object store once.

    Args:
        ray: The imported ``ray`` module, joined to a cluster.
        name: The model as given: a hub name, ``builtin[:NAME]`` or a folder.
        shipped: Folders already put into the object store, by path (filled here).

    Returns:
        ``{}`` for a hub name; ``{"builtin": NAME, "as": PATH}`` for a shipped model; ``{"shipped": {...}, "as": PATH}`` for a folder.
    """
    from lens_digits.builtin import model_source, shipped_model

    source = model_source(name)
    path = Path(source).expanduser()
    if not path.is_dir():
        return {}
    builtin = shipped_model(path)
    if builtin is not None:
        return {"builtin": f"builtin:{builtin}", "as": str(path)}
    if str(path) not in shipped:
        packed = pack(path)
        digest = hashlib.sha256("\n".join(f"{k} {v}" for k, v in packed["sha256"].items()).encode()).hexdigest()[:32]
        shipped[str(path)] = {"ref": ray.put(packed), "digest": digest, "name": path.name}
    return {"shipped": shipped[str(path)], "as": str(path)}


def materialize(shipped: dict[str, Any]) -> Path:
    """A shipped checkpoint folder on this node: copied out of the object store once per node, then reused.

    Returns:
        The folder, under this node's temporary folder.

    Raises:
        OSError: The folder cannot be made (and no other worker of this node made it).
    """
    import ray

    root = Path(tempfile.gettempdir()) / f"lens-digits-models-{os.getuid()}" / shipped["digest"]
    folder = root / shipped["name"]
    if folder.is_dir():
        return folder
    root.parent.mkdir(mode=0o700, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root.parent))
    try:
        unpack(ray.get(shipped["ref"]), staging / shipped["name"])
        try:
            os.rename(staging, root)  # atomic: another worker of this node that got there first wins, and its copy is used
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_unit_model(spec: dict[str, Any], origin: dict[str, Any] | None) -> Any:
    """Load a unit's model here: from ``origin`` (on a Ray worker) or from the model string itself (locally).

    Returns:
        The model, named as the driver would name it.
    """
    from lens_digits.builtin import model_source
    from lens_digits.model.loading import load_model

    origin = origin or {}
    if "shipped" in origin:
        source = str(materialize(origin["shipped"]))
    else:
        source = model_source(origin.get("builtin", spec["model"]))
    model = load_model(source, device=spec.get("device"), dtype=spec.get("dtype"), progress=False)
    if origin.get("as") and source != origin["as"]:  # the driver's path, so that run records and cache keys are a local run's
        model.cfg.model_name = str(model.cfg.model_name).replace(source, origin["as"])
    return model


# ---- where the work runs --------------------------------------------------------------------------


def scratch_folder(kind: str) -> Path:
    """A new private temporary folder for one task (``lens-digits-KIND-PID-XXXX``); those of dead worker processes are removed first.

    A worker killed mid-task (by Ray, the kernel or a user) leaves its folder behind; the next task of that kind on the node
    removes it, so retried and resumed work leaves nothing on the nodes.

    Returns:
        The folder.
    """
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"lens-digits-{kind}-*-*"):
        pid = old.name.split("-")[3]
        if pid.isdigit() and not process_alive(int(pid)) and old.owner() == Path(tempfile.gettempdir()).owner():
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"lens-digits-{kind}-{os.getpid()}-"))


def node_id() -> str:
    """The Ray node this worker runs on.

    Returns:
        Its node id, as Ray names it.
    """
    import ray

    return str(ray.get_runtime_context().get_node_id())
