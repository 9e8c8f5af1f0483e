"""What may be written where: output paths, the folders this package wrote, and the ones it never touches.

A run directory is written only where :func:`check_output` allows: a new or
empty folder, or (with ``overwrite``) one that :func:`is_run_directory`
recognises as this package's own. The working directory, its parents, the home
folder and the filesystem root are always refused (:func:`protected_reason`).
:mod:`lens_digits.storage.reservation` writes the folder; this module only looks.

This module imports neither torch nor pandas.
"""

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from lens_digits.errors import OutputError

RUN_FORMAT = "lens_digits.run"
"""The ``format`` of a ``run.json`` this package wrote: how it recognises its own run directories."""

RUN_FILES = ("grid.csv", "emergence.csv", "prompts.jsonl", "examples.jsonl", "report.html", "heatmap.html", "run.json")
"""The files of a run directory."""

CACHE_FOLDER = "cache"
"""The run directory's residual cache (see :mod:`lens_digits.residuals.cache`)."""
SHARD_FILE = re.compile(r"seed\d+-(first|answer|model)-(test|train|val)-scale\d+-\d{4}\.(safetensors|json)")
"""The files a residual cache holds."""


FIGURE_NAME = re.compile(r"heatmap[-\w.]*\.(html|png|svg|pdf)")
"""Figures ``lens-digits plot`` writes into a run directory (they keep it a run directory)."""

TAG = "lens-digits"


def resolve_output(path: str | os.PathLike[str]) -> Path:
    """The absolute path of an output folder, with ``~`` expanded; refuses an empty name.

    Returns:
        The absolute path (symbolic links are not resolved).

    Raises:
        OutputError: The name is empty or only whitespace.
    """
    text = os.fspath(path)
    if not str(text).strip():
        raise OutputError("the output folder name is empty; pass a new folder for the run, e.g. --out runs/demo")
    return Path(text).expanduser().absolute()


def protected_reason(target: Path) -> str | None:
    """Why ``target`` may never be a run directory (None if it may).

    The working directory and every folder above it, the home folder, and the
    filesystem root hold things the user owns; a run directory is always a
    folder of its own.

    Returns:
        The reason (``it is your home folder``, ...), or None.
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

    Returns:
        True if it does; False also where the folder or its ``marker`` file cannot be read.
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
    """Whether ``folder`` is a folder of residual shards and nothing else (temporary files of a killed write included).

    Returns:
        True if it is a real folder (not a symbolic link) that can be read and holds only such files.
    """
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError:
        return False
    return all(SHARD_FILE.fullmatch(n) or (n.startswith(".") and n.endswith(".part")) for n in names)


def pending_cache(target: Path) -> Path:
    """Where a run into ``target`` keeps its residual shards until its run directory is written (kept after a kill).

    Returns:
        The hidden folder ``.NAME.lens-digits.cache`` beside ``target``.
    """
    return target.with_name(f".{target.name}.{TAG}.cache")


def check_output(
    path: str | os.PathLike[str],
    overwrite: bool = False,
    *,
    is_ours: Callable[[Path], bool] = is_run_directory,
    flag: str = "--overwrite",
) -> Path:
    """Check that a run directory may be written at ``path``; create nothing.

    Returns:
        The absolute path of the output folder (see :func:`resolve_output`).

    Raises:
        OutputError: The name is empty; the folder is protected, is a file or a
            symbolic link (broken or not), cannot be read, is not empty (and
            ``overwrite`` is False), is not empty and not something this package
            wrote (whatever ``overwrite`` says), holds figures that ``lens-digits plot``
            drew (``overwrite`` never deletes those), or the nearest existing folder
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
        contents = list_folder(target)
        if contents:
            if not overwrite:
                raise OutputError(f"output folder {shown!r} is not empty; choose a new one or pass {flag} to replace an earlier run")
            if not is_ours(target):
                raise OutputError(
                    f"output folder {shown!r} was not written by lens-digits (it holds {_some(contents)}); {flag} replaces only "
                    "lens-digits output, so move those files away or choose another folder"
                )
            drawn = [n for n in contents if FIGURE_NAME.fullmatch(n) and n != "heatmap.html"]
            if drawn:  # figures `lens-digits plot` drew: the user's, not the run's; never deleted unasked
                raise OutputError(
                    f"output folder {shown!r} holds figures drawn by lens-digits plot ({_some(drawn)}) that {flag} would "
                    "delete; move them out of the folder first (or choose another folder)"
                )
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write output folder {shown!r}: {str(parent)!r} is not writable; choose another folder")
    return target


def list_folder(folder: Path) -> list[str]:
    """The names in ``folder``, sorted; an :class:`OutputError` naming the folder if it cannot be read.

    Returns:
        The names of the folder's entries, sorted.

    Raises:
        OutputError: The folder cannot be read.
    """
    try:
        return sorted(p.name for p in folder.iterdir())
    except OSError as e:
        raise OutputError(f"cannot read output folder {str(folder)!r}: {e.strerror}; choose another folder") from None


def _some(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")
