"""Where a warning points: at the user's line, not at the package's inside."""

import inspect
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent)
_WRAPPERS = ("jaxtyping", "beartype", "typeguard")


def user_stacklevel() -> int:
    """The ``stacklevel`` of ``warnings.warn`` that names the first caller outside this package.

    Called by the function that warns, it counts that function (level 1) and every package frame above it, so a
    warning raised deep in a sweep points at the notebook line or script that started the sweep.

    Returns:
        The stack level to pass to ``warnings.warn``.
    """
    frame = inspect.currentframe()
    frame = frame.f_back if frame is not None else None
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in _WRAPPERS:
        frame = frame.f_back  # a type checker's wrapper around this function
    # now the function that warns: level 1
    level = 1
    while frame is not None and _inside(frame.f_code.co_filename, frame.f_globals.get("__name__", "")):
        frame = frame.f_back
        level += 1
    return level


def _inside(filename: str, module: str) -> bool:
    """Whether a frame of ``filename`` is the package's own.

    Returns:
        True for the package's files and for code wrapped around them: a run-time type checker's wrappers
        (jaxtyping, beartype, typeguard, as the test suite installs them) and their generated code
        (``<@beartype(...)>``); not ``<string>`` or ``<stdin>``, which are the user's.
    """
    if filename.startswith("<@beartype") or module.split(".")[0] in _WRAPPERS:
        return True
    return str(Path(filename).resolve()).startswith(_PACKAGE)
