"""Residuals assembled on disk: a memory-mapped array whose space is reserved first, and the temporary files it leaves.

A cached sweep assembles its shards into one array per split; on the CPU that
array is a memory-mapped file in the cache folder, unlinked as soon as it is
mapped, so the residuals are pages the kernel can write out under memory
pressure. Its disk space is reserved before mapping: a page that found the
disk full later would kill the process with SIGBUS.
"""

import errno
import os
import re
import secrets
import shutil
from pathlib import Path

import torch
from torch import Tensor

from lens_digits.errors import OutputError


def mapped_zeros(folder: Path, shape: tuple[int, int, int, int]) -> Tensor:
    """Float32 zeros of ``shape``, memory-mapped from a file in ``folder`` whose disk space is reserved first.

    The file is unlinked as soon as it is mapped, so nothing is left on disk.

    Returns:
        The array, as a tensor on the CPU.

    Raises:
        OutputError: ``folder``'s disk cannot hold it; the message says how much is needed and where.
    """
    import numpy as np

    path = folder / f".assembled-{os.getpid()}-{secrets.token_hex(4)}.part"
    nbytes = 4 * shape[0] * shape[1] * shape[2] * shape[3]
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        reserve(fd, nbytes)
    except OSError as e:
        os.close(fd)
        path.unlink(missing_ok=True)
        free = shutil.disk_usage(folder).free
        raise OutputError(
            f"assembling the residuals needs {nbytes / 2**20:,.1f} MiB in {str(folder)!r}, which has {free / 2**20:,.1f} MiB "
            f"free ({e.strerror}); free some space, put the run on another disk, or keep the residuals in memory (--no-cache)"
        ) from None
    os.close(fd)
    array = np.memmap(path, dtype=np.float32, mode="r+", shape=shape)
    try:
        path.unlink()
    except OSError:  # a system that cannot unlink an open file: the cache's clear_partial removes it next time
        pass
    return torch.from_numpy(array)


def reserve(fd: int, nbytes: int) -> None:
    """Allocate ``nbytes`` of disk for a file (``posix_fallocate``; where it is missing, by writing zeros).

    Raises:
        OSError: The disk cannot hold ``nbytes`` (``posix_fallocate``'s error, unless it is unsupported there).
    """
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, nbytes)
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    block = bytes(1 << 20)
    done = 0
    while done < nbytes:
        done += os.pwrite(fd, block[: min(len(block), nbytes - done)], done)
    os.fsync(fd)


def own(name: str) -> bool:
    """Whether a temporary file's name carries this process's id.

    Returns:
        True if ``name`` holds this process's id as ``.PID.`` or ``-PID-``.
    """
    return f".{os.getpid()}." in name or f"-{os.getpid()}-" in name


def alive(name: str) -> bool:
    """Whether the process whose id a temporary file's name carries (``.NAME.PID.part``, ``.assembled-PID-X.part``) still runs.

    Returns:
        True if another process with that id exists; False for no id, this process's id, or no such process.
    """
    found = re.search(r"[.-](\d+)[.-][^.]*\.part$|\.(\d+)\.part$", name)
    pid = int(next(g for g in found.groups() if g)) if found else None
    if pid is None or pid == os.getpid():
        return False
    return process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists (one of another user's counts: it cannot be signalled but is there).

    Returns:
        True if it exists.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
