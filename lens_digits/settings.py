"""Settings as validated dataclasses: the fields, their command-line flags and checks, written once.

The configs (:class:`~lens_digits.problems.tasks.TaskConfig`,
:class:`~lens_digits.runs.config.SweepConfig`,
:class:`~lens_digits.builtin.recipe.TrainConfig`) declare each field with
:func:`option`; :func:`add_arguments` derives the command line from them, so a
setting is named, defaulted and checked in one place for the API, the command
line and ``run.json``. This module imports no torch.
"""

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

from lens_digits._stack import user_stacklevel
from lens_digits.errors import LensDigitsError


def parse_methods(methods: str | Sequence[Any]) -> list[Any]:
    """A comma-separated string or a list of names (or decoder objects), duplicates dropped.

    Returns:
        The names (and objects) in the order given, each name once.

    Raises:
        LensDigitsError: No method is given.

    >>> parse_methods("logit_lens")
    ['logit_lens']
    """
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    out: list[Any] = []
    for m in methods:
        if isinstance(m, str) and m in out:
            continue
        out.append(m)
    if not out:
        raise LensDigitsError("no methods given; use e.g. methods=['logit_lens']")
    return out


def _check_int(name: str, value: Any, low: int, high: int | None = None, flag: str | None = None) -> int:
    shown = flag or name
    if isinstance(value, bool) or not isinstance(value, int):
        raise LensDigitsError(f"{shown} must be an integer, got {value!r}")
    if value < low:
        raise LensDigitsError(f"{shown} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise LensDigitsError(f"{shown} is {value:,}, above the limit of {high:,}")
    return value


def _int_list(name: str, value: Any, low: int) -> tuple[int, ...]:
    """Integers ``>= low`` from a list or a comma-separated string, duplicates dropped, order kept.

    Returns:
        The integers.

    Raises:
        LensDigitsError: An item is not an integer of at least ``low``.
    """
    items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    out = []
    for v in items:
        try:
            number = int(v) if not isinstance(v, float) or v.is_integer() else None
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(v, bool) or number < low:
            raise LensDigitsError(f"{name} must be integers >= {low}, comma-separated (e.g. 0,1,2); got {value!r}")
        out.append(number)
    return tuple(dict.fromkeys(out))


def _float_list(name: str, value: Any) -> tuple[float, ...]:
    """Numbers in (0, 1] from a list or a comma-separated string, sorted.

    Returns:
        The distinct numbers, in increasing order.

    Raises:
        LensDigitsError: None is given, or one is not a number in (0, 1].
    """
    items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    try:
        out = tuple(sorted({float(v) for v in items}))
    except (TypeError, ValueError):
        out = ()
    if not out or any(not (0 < t <= 1) for t in out):
        raise LensDigitsError(f"{name} must be accuracies in (0, 1], comma-separated (e.g. 0.5,0.9); got {value!r}")
    return out


def option(default: Any, help: str, *, flag: str | None = None, cli: bool = True, **argparse: Any) -> Any:
    """A dataclass field that also describes its command-line flag.

    The command line is derived from the configs (see :func:`add_arguments`), so
    each setting's name, default, help and checks are written once. ``flag``
    overrides ``--field-name``; ``cli=False`` keeps a field off the command line;
    ``argparse`` passes ``choices``, ``metavar`` and the like.

    Returns:
        A ``dataclasses.field`` with ``default``, whose metadata holds ``help``, ``flag``, ``cli`` and ``argparse``.
    """
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "cli": cli, "argparse": argparse})


def flag_of(f: "dataclasses.Field[Any]") -> str:
    """The command-line flag of a config field.

    Returns:
        The field's own ``flag``, else ``--`` and its name with ``-`` for ``_``.
    """
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _shown(default: Any) -> str:
    if isinstance(default, (tuple, list)):
        return ",".join(str(x) for x in default)
    return str(default)


def add_arguments(parser: Any, cls: type, *, defaults: dict[str, Any] | None = None) -> None:
    """Add a flag for every command-line field of config dataclass ``cls`` to an argparse parser.

    Values stay strings or numbers as typed; the dataclass parses and checks
    them (``--scales 1-4``, ``--methods logit_lens,probe``), so the command
    line and the API fail alike. Flags not given are left out of the namespace
    and the config's own defaults apply (``defaults`` overrides them here).
    """
    import argparse

    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli"):
            continue
        default = defaults.get(f.name, f.default)
        kwargs: dict[str, Any] = dict(f.metadata.get("argparse", {}))
        help_text = f.metadata["help"]
        if default is False:
            kwargs.update(action="store_true")
        elif default is None and "bool" in str(f.type):
            kwargs.update(action=argparse.BooleanOptionalAction)
        else:
            kwargs.setdefault("metavar", flag_of(f).lstrip("-").upper().replace("-", "_"))
            if isinstance(default, (int, float)) and not isinstance(default, bool) and "type" not in kwargs:
                kwargs["type"] = type(default)
            if default not in (None, "") and "default" not in help_text:
                help_text += f" (default: {_shown(default)})"
        parser.add_argument(flag_of(f), dest=f.name, default=argparse.SUPPRESS, help=help_text, **kwargs)


def config_from_args(cls: type, args: Any, **overrides: Any) -> Any:
    """The config dataclass ``cls`` from the fields an argparse namespace has (and ``overrides``).

    Returns:
        An instance of ``cls``, validated by its own checks.
    """
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**(values | overrides))


def flags(*classes: type) -> dict[str, str]:
    """Field name -> command-line flag, for the command-line fields of config classes.

    Returns:
        The flag of each command-line field, by field name.
    """
    return {f.name: flag_of(f) for cls in classes for f in dataclasses.fields(cls) if f.metadata.get("cli")}


def known_fields(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``d`` that are fields of dataclass ``cls``; warns once about the others.

    Returns:
        Those entries, in the order of ``d``.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in d if k not in names)
    if unknown:
        warnings.warn(
            f"{cls.__name__}: skipped unknown setting(s) {unknown} (written by a newer lens-digits?)", stacklevel=user_stacklevel()
        )
    return {k: v for k, v in d.items() if k in names}
