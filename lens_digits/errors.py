"""Exceptions raised for bad input.

Every error a user can cause by what they ask for derives from
:class:`LensDigitsError`; its message names the problem and what to do about it.
The command line turns these into a one-line message and exit code 2.
"""


class LensDigitsError(ValueError):
    """Bad input: the message says what is wrong and how to fix it."""


class BoundaryMergeError(LensDigitsError):
    """The tokenizer merges the start of the answer into the prompt's last token."""


class ContextLengthError(LensDigitsError):
    """A prompt plus its answer is longer than the model's context window."""


class ModelLoadError(LensDigitsError):
    """A model or checkpoint could not be found or loaded."""


class OutputError(LensDigitsError):
    """An output folder cannot be used: taken by another run, not ours to replace, or not writable."""


class NonFiniteError(LensDigitsError):
    """A model, a decoder or cached residuals hold NaN or infinite values: named, never scored."""


class RunDirectoryError(LensDigitsError):
    """A run directory's files are missing, damaged or not what this package writes."""


class TransformerLensVersionError(LensDigitsError):
    """A method needs a TransformerLens release other than the one installed (one with ``tools.analysis``)."""


class ClusterError(LensDigitsError):
    """A Ray cluster cannot run the work: no node offers what a unit asks for, a node left, or a worker kept dying."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut to ``limit`` characters (its type if it has no message).

    Returns:
        The message with its whitespace collapsed to single spaces, ending in ``...`` if cut; the exception's type name if it is empty.
    """
    text = " ".join(str(e).split())
    return (text[:limit] + "...") if len(text) > limit else (text or type(e).__name__)


_ERRNO_ADVICE = {
    "ENOSPC": "no space left on the device: free some space or choose a folder on another disk",
    "EDQUOT": "the disk quota is used up: free some space or choose a folder on another disk",
    "EFBIG": "the file is larger than this process may write (ulimit -f): raise the limit or write fewer problems",
    "EROFS": "the filesystem is read-only: choose a writable folder",
    "EACCES": "permission denied: choose a folder you can write",
    "EPERM": "operation not permitted: choose a folder you can write",
    "ENOENT": "a folder was removed while the command ran: run it again",
    "ENOTDIR": "a folder was replaced by a file while the command ran: run it again",
    "EIO": "the device reported an input/output error: check the disk",
    "ELOOP": "a symbolic link stands where lens-digits writes: remove it",
}


def os_error_text(e: OSError) -> str:
    """An ``OSError`` as one line naming the path and what to do (a full disk, a read-only or vanished folder, ...).

    Returns:
        ``cannot write 'path': advice`` (``cannot use`` for a vanished folder or an I/O error), or
        ``a file operation failed: advice`` if the error names no path.

    >>> import errno
    >>> os_error_text(OSError(errno.ENOSPC, "No space left on device", "/runs/demo/grid.csv"))
    "cannot write '/runs/demo/grid.csv': no space left on the device: free some space or choose a folder on another disk"
    """
    import errno as errno_module

    name = errno_module.errorcode.get(e.errno or -1, "")
    advice = _ERRNO_ADVICE.get(name) or (e.strerror or type(e).__name__)
    where = e.filename if e.filename is not None else None
    if e.filename2 is not None:
        where = f"{e.filename} -> {e.filename2}"
    verb = "cannot use" if name in ("ENOENT", "ENOTDIR", "EIO") else "cannot write"
    return f"{verb} {str(where)!r}: {advice}" if where is not None else f"a file operation failed: {advice}"


def wrapped_os_error(e: BaseException, path: object) -> OSError | None:
    """The ``OSError`` a library's own exception stands for (safetensors says ``I/O error: ... (os error 28)``), naming ``path``.

    None if ``e`` is no such error.

    Returns:
        ``e`` itself if it is an ``OSError``; else a new ``OSError`` with the error number that its message
        names and ``path`` as its file name; None if the message names no ``(os error N)``.

    >>> wrapped_os_error(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), "m").errno
    28
    """
    import re

    if isinstance(e, OSError):
        return e
    found = re.search(r"\(os error (\d+)\)", str(e))
    if not found:
        return None
    import os

    number = int(found.group(1))
    return OSError(number, os.strerror(number), str(path))
