"""Filesystem steps that cannot be half-done: a file written whole, an atomic folder swap, flushing to disk, signals held back.

Linux's ``renameat2(RENAME_EXCHANGE)`` swaps two folders in one step, so a
replaced folder is never missing; elsewhere :func:`exchange` raises
``NotImplementedError`` and callers fall back to two renames.
"""

import contextlib
import ctypes
import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: into ``.NAME.PID.part`` beside it, flushed, then renamed over it.

    A failure removes the temporary file; a killed writer leaves it, named with
    its process id so that a later run can tell a dead writer's file from a live
    one's. The file gets the permissions of any file the user makes (the umask).
    No symbolic link is followed: one where the temporary file goes is refused,
    and one at ``path`` is replaced, not written through. An ``OSError`` names
    ``path`` (what the user asked for), not the temporary file.

    Raises:
        OutputError: A symbolic link or a folder stands where the temporary file goes.
        OSError: Writing, flushing or renaming failed (re-raised, naming ``path``).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    created = False
    try:
        fd = _create_new(tmp)
        created = True
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if created:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (str(tmp), None):
            e.filename = str(path)
        raise


def _create_new(path: Path) -> int:
    """Open a new file for writing without following a symbolic link (one there is refused by name).

    A regular file of the same name is what a killed writer with this process id left: it is replaced.

    Returns:
        A file descriptor of the new file, open for writing.

    Raises:
        OutputError: A symbolic link or something other than a regular file is at ``path``.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, 0o666)  # the umask decides, as for any file the user makes
    except FileExistsError:
        if path.is_symlink() or not path.is_file():
            from lens_digits.errors import OutputError

            raise OutputError(
                f"{str(path)!r} is a symbolic link or a folder where lens-digits writes a temporary file; remove it"
            ) from None
        path.unlink()
        return os.open(path, flags, 0o666)


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    """``renameat2`` (Linux); raises OSError, or NotImplementedError where the call does not exist.

    Raises:
        NotImplementedError: Not Linux, the C library has no ``renameat2``, or the system or filesystem does not support it.
        OSError: The call failed otherwise; it names ``dst``.
    """
    if not sys.platform.startswith("linux"):
        raise NotImplementedError("renameat2 is Linux-only")
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fn = libc.renameat2
    except AttributeError:  # glibc before 2.28
        raise NotImplementedError("this C library has no renameat2") from None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise NotImplementedError(os.strerror(err))
        raise OSError(err, os.strerror(err), str(dst))


def exchange(a: Path, b: Path) -> None:
    """Swap two folders atomically (both keep existing throughout).

    Raises:
        NotImplementedError: The system cannot swap atomically (callers fall back to two renames).
        OSError: The swap failed; it names ``b``.
    """
    _renameat2(a, b, _RENAME_EXCHANGE)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and the folders themselves to disk."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))
        dirs.sort()


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the filesystem allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends, then deliver them.

    Only the main thread can change signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    wanted = [signal.SIGINT, signal.SIGTERM]
    previous = {s: signal.getsignal(s) for s in wanted}

    def hold(signum: int, frame: Any) -> None:
        caught.append(signum)

    for s in wanted:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(caught):
            os.kill(os.getpid(), signum)
