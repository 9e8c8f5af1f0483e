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


class RunDirectoryError(LensDigitsError):
    """A run directory's files are missing, damaged or not what this package writes."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut to ``limit`` characters (its type if it has no message)."""
    text = " ".join(str(e).split())
    return (text[:limit] + "...") if len(text) > limit else (text or type(e).__name__)
