"""Run directories that are written whole or not at all, and never over what this package did not write.

A run directory (``grid.csv``, ``prompts.jsonl``, ``heatmap.html``, ``run.json``)
is written by a :class:`Reservation`:

1. **Reserve** (before any compute): take an exclusive lock on a hidden lock
   file beside the folder (``.NAME.lens-digits.lock``). A second run into the
   same folder fails at once, while the first still runs. Holding the lock, the
   target is checked (:func:`lens_digits.storage.paths.check_output`): it must not
   exist, be empty, or (with ``overwrite``) be a run directory this package
   wrote. The working directory, its parents, the home folder and the
   filesystem root are always refused. Temporary folders
   left by runs that died (SIGKILL, power loss) are removed now: they are
   recognised by their name *and* a marker file inside, and their owner is dead
   because the lock is free.
2. **Write**: files go to a temporary sibling folder
   (``.NAME.lens-digits-PID-XXXX.tmp``), are fsynced, and the folder is moved
   into place with one atomic rename, which fails (and loses nothing) if a
   non-empty folder appeared meanwhile. Replacing an existing run directory
   swaps the two folders atomically (``renameat2(RENAME_EXCHANGE)`` on Linux),
   so ``NAME`` is never missing; the old run is then deleted.
3. **Release**: the lock file is removed; folders the reservation created above
   the target are removed again if nothing was written.

SIGINT and SIGTERM arriving while the folder is moved into place are held back
until the move is complete, so an interrupt leaves either the old or the new
run directory, never a mix and never nothing.

This module imports neither torch nor pandas.
"""

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from lens_digits.errors import OutputError
from lens_digits.storage import atomic
from lens_digits.storage.paths import (
    CACHE_FOLDER,
    TAG,
    check_output,
    is_cache_folder,
    is_run_directory,
    list_folder,
    pending_cache,
    resolve_output,
)

__all__ = ["PARTIAL_MARKER", "Reservation", "write_run_directory"]

PARTIAL_MARKER = ".lens-digits-partial"
"""File inside a temporary folder: what a later run may delete once the folder's owner is dead."""


# ---- the reservation ---------------------------------------------------------------------------


class Reservation:
    """An output folder reserved for one run: locked, checked, written atomically, released.

    Use as a context manager; :meth:`write` fills a temporary folder through a
    callback and moves it into place.

    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp()) / "run"
    >>> with Reservation(out) as r:
    ...     _ = r.write(lambda tmp: (tmp / "run.json").write_text('{"format": "lens_digits.run"}'))
    >>> sorted(p.name for p in out.parent.iterdir())
    ['run']
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        overwrite: bool = False,
        *,
        is_ours: Callable[[Path], bool] = is_run_directory,
        flag: str = "--overwrite",
    ) -> None:
        """Nothing happens until :meth:`acquire` (or ``with``)."""
        self.shown = str(path)
        self.target = resolve_output(path)
        self.overwrite = overwrite
        self.is_ours = is_ours
        self.flag = flag
        self.written = False
        self._fd: int | None = None
        self._created: list[Path] = []
        self._tmp: Path | None = None
        self.left_behind: list[Path] = []
        """What could not be removed (its folder was made read-only or removed meanwhile): the next run into it removes it."""

    # names beside the target
    @property
    def lock_path(self) -> Path:
        """The lock file beside the target."""
        return self.target.with_name(f".{self.target.name}.{TAG}.lock")

    def _temp_prefix(self) -> str:
        return f".{self.target.name}.{TAG}-"

    def acquire(self) -> "Reservation":
        """Lock the folder for this run, check it and clear what dead runs left.

        Returns:
            The reservation itself, holding the lock and a temporary folder to write into.

        Raises:
            OutputError: Another live run holds the folder, or :func:`check_output` refuses it.
        """
        check_output(self.shown if self.shown.strip() else self.target, self.overwrite, is_ours=self.is_ours, flag=self.flag)
        self._make_parents()
        try:
            self._lock()
            self._clear_dead()
            self.target = check_output(self.target, self.overwrite, is_ours=self.is_ours, flag=self.flag)
            self._tmp = self._make_temp()  # writing it now proves the folder writable before any compute
        except BaseException:
            self.release()
            raise
        return self

    def _make_parents(self) -> None:
        missing = []
        p = self.target.parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as e:
                self._remove_created()
                raise OutputError(f"cannot create output folder {self.shown!r}: {e.strerror} at {str(folder)!r}") from None
            self._created.append(folder)

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): an exclusive create stands in
            fcntl = None  # type: ignore[assignment]
        while True:
            if self.lock_path.is_symlink():
                raise OutputError(
                    f"the lock file {str(self.lock_path)!r} is a symbolic link; lens-digits never writes through one: remove it"
                )
            try:
                flags = os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL) | getattr(os, "O_NOFOLLOW", 0)
                fd = os.open(self.lock_path, flags, 0o644)
            except FileExistsError:
                raise OutputError(self._busy_message(None)) from None
            except OSError as e:
                if e.errno == errno.ELOOP:  # made a link between the check and the open
                    raise OutputError(
                        f"the lock file {str(self.lock_path)!r} is a symbolic link; lens-digits never writes through one: remove it"
                    ) from None
                raise OutputError(
                    f"cannot write output folder {self.shown!r}: {e.strerror} for {str(self.lock_path.parent)!r}; choose another folder"
                ) from None
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd) or {}
                os.close(fd)
                raise OutputError(self._busy_message(holder)) from None
            # The file may have been unlinked by its previous holder between our open and our lock: retry on a fresh one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "argv": sys.argv}).encode())

    def _busy_message(self, holder: dict[str, Any] | None) -> str:
        if holder is None:  # an exclusive-create lock, which outlives a killed run
            return (
                f"another lens-digits run is writing output folder {self.shown!r}; wait for it to finish or choose another "
                f"folder (if no run is active, delete {str(self.lock_path)!r})"
            )
        who = f" (pid {holder['pid']})" if "pid" in holder else ""
        return f"another lens-digits run{who} is writing output folder {self.shown!r}; wait for it to finish or choose another folder"

    def _clear_dead(self) -> None:
        """Remove temporary folders of earlier runs into this target (their owners are dead: the lock was free)."""
        prefix = self._temp_prefix()
        parent = self.target.parent
        for entry in parent.iterdir():
            if not entry.name.startswith(prefix) or entry.is_symlink() or not entry.is_dir():
                continue
            if entry.name.endswith(".tmp") and ((entry / PARTIAL_MARKER).is_file() or self.is_ours(entry)):
                kept = entry / CACHE_FOLDER  # a run killed while its cache was being moved in: keep the shards for the next run
                if is_cache_folder(kept) and not os.path.lexists(pending_cache(self.target)):
                    os.rename(kept, pending_cache(self.target))
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.endswith(".old") and self.is_ours(entry):
                # The non-Linux replace moved the old run aside and died before finishing.
                if self.target.exists():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    os.rename(entry, self.target)

    def write(self, fill: Callable[[Path], None], carry: Path | None = None) -> Path:
        """Fill a temporary folder with ``fill(folder)`` and move it into place as the target.

        ``carry``: a residual cache folder moved in as ``cache/`` (by a rename,
        so it costs nothing whatever its size); it is moved back if the run
        directory cannot be written.

        Returns:
            The target: the absolute path of the run directory written.

        Raises:
            OutputError: The target was filled by someone else meanwhile (nothing is lost), or no temporary folder can be made.
            RuntimeError: The reservation has not been acquired.
            OSError: ``fill`` or moving the folder into place failed (re-raised; a path in the temporary folder is shown in the target).
        """
        if self._fd is None:
            raise RuntimeError("acquire the reservation before writing")
        tmp = self._tmp if self._tmp is not None and self._tmp.is_dir() else self._make_temp()
        self._tmp = None
        carried = tmp / CACHE_FOLDER
        try:
            try:
                fill(tmp)
            except OSError as e:  # name the file the user asked for, not our temporary folder
                for attr in ("filename", "filename2"):
                    value = getattr(e, attr)
                    if isinstance(value, str) and value.startswith(str(tmp)):
                        setattr(e, attr, str(self.target) + value[len(str(tmp)) :])
                if (
                    e.filename is None and e.errno is not None
                ):  # a library's write() that does not say which file: the folder it was writing
                    e.filename = str(self.target)
                raise
            if carry is not None and carry.is_dir():
                os.rename(carry, carried)
            (tmp / PARTIAL_MARKER).unlink()
            if self.target.is_dir():
                os.chmod(tmp, stat.S_IMODE(self.target.stat().st_mode))  # keep the permissions of the folder replaced
            atomic.fsync_tree(tmp)
            with atomic.signals_held():
                self._move_into_place(tmp)
                self.written = True
        finally:
            if carry is not None and not self.written and carried.is_dir() and not os.path.lexists(carry):
                try:
                    os.rename(carried, carry)
                except OSError:  # a folder made read-only meanwhile: the next run rescues the shards from the temporary folder
                    self.left_behind.append(carried)
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
                if tmp.exists():
                    self.left_behind.append(tmp)
        atomic.fsync_dir(self.target.parent)
        return self.target

    def _make_temp(self) -> Path:
        """The temporary sibling the run is written into, with the marker that lets a later run remove it.

        Returns:
            The new folder, ``.NAME.lens-digits-PID-XXXXXX.tmp`` beside the target.

        Raises:
            OutputError: The folder or its marker cannot be written.
        """
        tmp = self.target.with_name(f"{self._temp_prefix()}{os.getpid()}-{secrets.token_hex(3)}.tmp")
        try:
            tmp.mkdir()  # permissions from the umask, as any folder the user makes
            (tmp / PARTIAL_MARKER).write_text(f"{os.getpid()}\n")
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputError(
                f"cannot write output folder {self.shown!r}: {e.strerror} in {str(tmp.parent)!r}; choose another folder"
            ) from None
        return tmp

    def _move_into_place(self, tmp: Path) -> None:
        target = self.target
        if target.exists() and list_folder(target):
            # Checked under the lock: a run directory of ours, and overwrite was asked for.
            if not (self.overwrite and self.is_ours(target)):
                raise OutputError(
                    f"output folder {self.shown!r} was filled by another program while this run computed; nothing was replaced"
                )
            try:
                atomic.exchange(tmp, target)
            except NotImplementedError:
                old = target.with_name(f"{self._temp_prefix()}{os.getpid()}.old")
                os.rename(target, old)
                os.rename(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
                return
            shutil.rmtree(tmp, ignore_errors=True)  # now the old run
            return
        try:
            os.rename(tmp, target)  # replaces an empty folder; fails on a non-empty one
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise OutputError(
                    f"output folder {self.shown!r} appeared (made by another program) while this run computed; nothing was replaced"
                ) from None
            raise

    def release(self) -> None:
        """Remove the lock file, the unused temporary folder and any folders made for a run that wrote nothing."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            if self._tmp.exists():
                self.left_behind.append(self._tmp)
            self._tmp = None
        if self._fd is not None:
            try:
                os.unlink(self.lock_path)
            except FileNotFoundError:
                pass
            except OSError:
                self.left_behind.append(self.lock_path)
            os.close(self._fd)
            self._fd = None
        if not self.written:
            self._remove_created()

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._created = []

    def __enter__(self) -> "Reservation":
        """Acquire.

        Returns:
            The reservation, acquired (see :meth:`acquire`).
        """
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        """Release; an exception on the way out learns what could not be removed (``left_behind``)."""
        self.release()
        if value is not None and self.left_behind:
            value.left_behind = [*getattr(value, "left_behind", []), *self.left_behind]  # type: ignore[attr-defined]


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data.decode() or "null")
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def write_run_directory(
    path: str | os.PathLike[str],
    fill: Callable[[Path], None],
    overwrite: bool = False,
    reservation: Reservation | None = None,
    carry: Path | None = None,
) -> Path:
    """Write a run directory through ``fill(tmp_folder)``, with a reservation of its own unless one is given.

    ``carry``: a residual cache folder to move in as ``cache/``.

    Returns:
        The absolute path of the run directory written.

    Raises:
        ValueError: ``reservation`` is for another folder than ``path``.
        OutputError: The folder cannot be reserved or written (see :meth:`Reservation.acquire` and :meth:`Reservation.write`).
    """
    if reservation is not None:
        if reservation.target != resolve_output(path):
            raise ValueError(f"the reservation is for {str(reservation.target)!r}, not {str(path)!r}")
        return reservation.write(fill, carry)
    with Reservation(path, overwrite) as r:
        return r.write(fill, carry)
