"""Run directories that are written whole or not at all, and never over what this package did not write.

A run directory (``grid.csv``, ``prompts.jsonl``, ``heatmap.html``, ``run.json``)
is written by a :class:`Reservation`:

1. **Reserve** (before any compute): take an exclusive lock on a hidden lock
   file beside the folder (``.NAME.lens-digits.lock``). A second run into the
   same folder fails at once, while the first still runs. Holding the lock, the
   target is checked: it must not exist, be empty, or (with ``overwrite``) be a
   run directory this package wrote. The working directory, its parents, the
   home folder and the filesystem root are always refused. Temporary folders
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
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from lens_digits import atomic
from lens_digits.errors import OutputError
from lens_digits.record import RUN_FORMAT

RUN_FILES = ("grid.csv", "emergence.csv", "prompts.jsonl", "heatmap.html", "run.json")
"""The files of a run directory."""

CACHE_FOLDER = "cache"
"""The run directory's residual cache (see :mod:`lens_digits.cache`)."""
SHARD_FILE = re.compile(r"seed\d+-(first|answer|model)-(test|train|val)-scale\d+-\d{4}\.(safetensors|json)")
"""The files a residual cache holds."""


FIGURE_NAME = re.compile(r"heatmap[-\w.]*\.(html|png|svg|pdf)")
"""Figures ``lens-digits plot`` writes into a run directory (they keep it a run directory)."""

TAG = "lens-digits"
PARTIAL_MARKER = ".lens-digits-partial"
"""File inside a temporary folder: what a later run may delete once the folder's owner is dead."""


# ---- what may be written where -----------------------------------------------------------------


def resolve_output(path: str | os.PathLike[str]) -> Path:
    """The absolute path of an output folder, with ``~`` expanded; refuses an empty name."""
    text = os.fspath(path)
    if not str(text).strip():
        raise OutputError("the output folder name is empty; pass a new folder for the run, e.g. --out runs/demo")
    return Path(text).expanduser().absolute()


def protected_reason(target: Path) -> str | None:
    """Why ``target`` may never be a run directory (None if it may).

    The working directory and every folder above it, the home folder, and the
    filesystem root hold things the user owns; a run directory is always a
    folder of its own.
    """
    resolved = _resolved(target)
    cwd = _resolved(Path.cwd())
    home = _resolved(Path.home())
    if resolved == Path(resolved.anchor):
        return "it is the filesystem root"
    if resolved == home:
        return "it is your home folder"
    if resolved == cwd:
        return "it is the working directory"
    if resolved in cwd.parents:
        return "it contains the working directory"
    return None


def _resolved(p: Path) -> Path:
    try:
        return p.resolve()
    except OSError:
        return p.absolute()


def is_run_directory(folder: Path, files: tuple[str, ...] = RUN_FILES, marker: str = "run.json") -> bool:
    """Whether ``folder`` holds a run directory written by this package, and nothing else.

    A run directory has a ``run.json`` whose ``format`` is ``lens_digits.run``
    (or, from releases before the key existed, one with ``versions`` naming
    ``lens-digits``), and only files this package writes.
    """
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return False
    redrawn = {n for n in names if FIGURE_NAME.fullmatch(n)}  # figures lens-digits plot adds
    if CACHE_FOLDER in names and files == RUN_FILES:
        if not is_cache_folder(folder / CACHE_FOLDER):
            return False
        names.discard(CACHE_FOLDER)
    if marker not in names or not names - redrawn <= set(files):
        return False
    try:
        info = json.loads((folder / marker).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict):
        return False
    if info.get("format") == RUN_FORMAT:
        return True
    versions = info.get("versions")
    return isinstance(versions, dict) and "lens-digits" in versions


def is_cache_folder(folder: Path) -> bool:
    """Whether ``folder`` is a folder of residual shards and nothing else (temporary files of a killed write included)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError:
        return False
    return all(SHARD_FILE.fullmatch(n) or (n.startswith(".") and n.endswith(".part")) for n in names)


def pending_cache(target: Path) -> Path:
    """Where a run into ``target`` keeps its residual shards until its run directory is written (kept after a kill)."""
    return target.with_name(f".{target.name}.{TAG}.cache")


def check_output(
    path: str | os.PathLike[str],
    overwrite: bool = False,
    *,
    is_ours: Callable[[Path], bool] = is_run_directory,
    flag: str = "--overwrite",
) -> Path:
    """Check that a run directory may be written at ``path``; create nothing.

    Raises:
        OutputError: The folder is protected, is a file, is not empty (and
            ``overwrite`` is False), is not empty and not something this package
            wrote (whatever ``overwrite`` says), or the nearest existing folder
            above it is not writable.
    """
    target = resolve_output(path)
    shown = str(path)
    reason = protected_reason(target)
    if reason:
        raise OutputError(f"refusing to write a run into {shown!r}: {reason}; pass a new folder for the run, e.g. --out runs/demo")
    if target.is_symlink() and not target.exists():
        raise OutputError(f"output {shown!r} is a broken symbolic link; remove it or choose another folder")
    if target.exists():
        if not target.is_dir():
            raise OutputError(f"output {shown!r} is a file, not a folder; choose another folder")
        if target.is_symlink():
            raise OutputError(f"output {shown!r} is a symbolic link; pass the folder it points to, or another folder")
        contents = _listing(target)
        if contents:
            if not overwrite:
                raise OutputError(f"output folder {shown!r} is not empty; choose a new one or pass {flag} to replace an earlier run")
            if not is_ours(target):
                raise OutputError(
                    f"output folder {shown!r} was not written by lens-digits (it holds {_some(contents)}); {flag} replaces only "
                    "lens-digits output, so move those files away or choose another folder"
                )
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write output folder {shown!r}: {str(parent)!r} is not writable; choose another folder")
    return target


def _listing(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir())
    except OSError as e:
        raise OutputError(f"cannot read output folder {str(folder)!r}: {e.strerror}; choose another folder") from None


def _some(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


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

    # names beside the target
    @property
    def lock_path(self) -> Path:
        """The lock file beside the target."""
        return self.target.with_name(f".{self.target.name}.{TAG}.lock")

    def _temp_prefix(self) -> str:
        return f".{self.target.name}.{TAG}-"

    def acquire(self) -> "Reservation":
        """Lock the folder for this run, check it and clear what dead runs left.

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
            try:
                flags = os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL)
                fd = os.open(self.lock_path, flags, 0o644)
            except FileExistsError:
                raise OutputError(self._busy_message(None)) from None
            except OSError as e:
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
                if is_cache_folder(kept) and not pending_cache(self.target).exists():
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

        Raises:
            OutputError: The target was filled by someone else meanwhile (nothing is lost).
        """
        if self._fd is None:
            raise RuntimeError("acquire the reservation before writing")
        tmp = self._tmp if self._tmp is not None and self._tmp.is_dir() else self._make_temp()
        self._tmp = None
        carried = tmp / CACHE_FOLDER
        try:
            fill(tmp)
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
            if carry is not None and not self.written and carried.is_dir() and not carry.exists():
                os.rename(carried, carry)
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        atomic.fsync_dir(self.target.parent)
        return self.target

    def _make_temp(self) -> Path:
        """The temporary sibling the run is written into, with the marker that lets a later run remove it."""
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
        if target.exists() and _listing(target):
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
            self._tmp = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
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
        """Acquire."""
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        """Release."""
        self.release()


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
    """
    if reservation is not None:
        if reservation.target != resolve_output(path):
            raise ValueError(f"the reservation is for {str(reservation.target)!r}, not {str(path)!r}")
        return reservation.write(fill, carry)
    with Reservation(path, overwrite) as r:
        return r.write(fill, carry)
