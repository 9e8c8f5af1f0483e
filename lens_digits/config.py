"""Settings of a sweep, validated in one place for the API, the command line and ``run.json``.

:class:`SweepConfig` holds what :func:`lens_digits.run_sweep` does beyond the
problems themselves (those are a :class:`~lens_digits.tasks.TaskConfig`). Every
field is checked when the object is made, so a bad setting fails with the same
one-line :class:`~lens_digits.errors.LensDigitsError` from a notebook and from
``lens-digits run``, before a model is loaded. This module imports no torch.
"""

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lens_digits.errors import LensDigitsError

TARGETS: tuple[str, ...] = ("first", "answer", "model")
"""``first``: first answer token at the last prompt position. ``answer``: every
answer token, teacher-forced. ``model``: every token of the model's own greedy
answer, teacher-forced (where each layer agrees with what the model will say)."""

SUBSETS = ("all", "solved", "unsolved")
PROBE_SCOPES = ("per_scale", "pooled")
NORMS = ("final", "none")
MAX_BATCH_SIZE = 1_000_000
COLORSCALES = ("Viridis", "Blues", "Cividis", "Plasma", "Greys")
"""Heatmap colour scales the command line offers (any plotly name works from Python)."""


def parse_targets(target: str | Sequence[str]) -> list[str]:
    """``"first"``, ``"answer"``, ``"model"``, ``"both"`` (first and answer), ``"all"``, or a list.

    >>> parse_targets("both")
    ['first', 'answer']
    """
    if isinstance(target, str):
        target = {"both": ["first", "answer"], "all": list(TARGETS)}.get(target, [t.strip() for t in target.split(",") if t.strip()])
    targets = list(dict.fromkeys(target))
    for t in targets:
        if t not in TARGETS:
            raise LensDigitsError(f"unknown target {t!r}; choose {', '.join(TARGETS)}, both or all")
    if not targets:
        raise LensDigitsError("no target given; choose first, answer, model, both or all")
    return targets


def parse_methods(methods: str | Sequence[Any]) -> list[Any]:
    """A comma-separated string or a list of names (or decoder objects), duplicates dropped.

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
    """Integers ``>= low`` from a list or a comma-separated string, duplicates dropped, order kept."""
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
    """Numbers in (0, 1] from a list or a comma-separated string, sorted."""
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
    """
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "cli": cli, "argparse": argparse})


def flag_of(f: "dataclasses.Field[Any]") -> str:
    """The command-line flag of a config field."""
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
    """The config dataclass ``cls`` from the fields an argparse namespace has (and ``overrides``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**(values | overrides))


def flags(*classes: type) -> dict[str, str]:
    """Field name -> command-line flag, for the command-line fields of config classes."""
    return {f.name: flag_of(f) for cls in classes for f in dataclasses.fields(cls) if f.metadata.get("cli")}


@dataclass
class SweepConfig:
    """How a sweep reads the model, beyond which problems it runs.

    Args:
        methods: Decoder names (``logit_lens``, ``probe``, ...), a list or comma-separated.
        targets: ``first``, ``answer``, ``model``, ``both``, ``all`` or a list.
        subset: Score ``all`` test problems, or only those the model ``solved``
            (greedy answer exactly right), or the ``unsolved`` ones.
        prepend_bos: Put BOS before prompts; None follows the model's config.
        chat: Wrap prompts in the tokenizer's chat template (instruct models).
        probe_scope: For probes: ``per_scale`` or ``pooled``.
        pairs: For ``patch``: (source, target) pairs per digit scale (None: every test problem with a source).
        batch_size: Problems per forward pass.
        cache_train: Run the model on train and validation problems even when no decoder fits (their residuals are cached).
        device: Where residuals are kept and decoders run (None: the model's device).
        within: Lenses: the k of the ``within_k`` numeric scores.
        thresholds: Accuracies whose first layer is an emergence layer.
        n_boot: Bootstrap resamples of the emergence layers' intervals.
        seeds: Several problem draws (their union is scored, and each draw alone); None: the task's seed.
        progress: Show progress bars.
    """

    methods: Sequence[str] | str = option(
        ("logit_lens",), "decoders, comma-separated: logit_lens, tuned_lens, probe, circular_probe (or your own)", metavar="LIST"
    )
    targets: Sequence[str] | str = option(
        ("answer",),
        "what a decoder must read: first (first answer token), answer (the whole answer, teacher-forced), model (the "
        "model's own greedy answer), both (first and answer), all, or a comma-separated list",
        flag="--target",
        metavar="TARGET",
    )
    subset: str = option("all", "score all test problems, or only those the model solves (or not)", choices=SUBSETS)
    prepend_bos: bool | None = option(None, "put BOS before prompts (default: follow the model)")
    chat: bool = option(False, "wrap prompts in the tokenizer's chat template (instruct models)")
    probe_scope: str = option(
        "per_scale", "probe: separate probes per digit scale, or one set fitted on all scales and scored per scale", choices=PROBE_SCOPES
    )
    norm: str = option(
        "final",
        "the lenses' readout of layers before the last: final (the model's final norm, each residual's own statistics) "
        "or none (the unembedding alone, as some published code does); the last column is the model's own prediction either way",
        choices=NORMS,
    )
    within: Sequence[int] | str = option(
        (1, 10), "lenses: the k of the within_k scores (share of problems whose decoded number is within +-k)", metavar="LIST"
    )
    thresholds: Sequence[float] | str = option(
        (0.5, 0.9), "accuracies whose first layer is reported as an emergence layer, with a bootstrap 95%% interval", metavar="LIST"
    )
    n_boot: int = option(1000, "bootstrap resamples of the emergence intervals", flag="--bootstrap")
    seeds: Sequence[int] | str | None = option(
        None, "run several problem draws (e.g. 0,1,2) and report their spread; replaces --seed", metavar="LIST"
    )
    pairs: int | None = option(
        None, "patch: (source, target) pairs per digit scale (default: every test problem that has a source)", type=int, metavar="N"
    )
    batch_size: int = option(64, "problems per forward pass")
    cache_train: bool = option(
        False, "also run the model on the train and validation problems and keep their residuals (to fit probes later: lens-digits fit)"
    )
    device: str | None = option(None, "where residuals are kept and decoders run (default: the model's device)", cli=False)
    progress: bool = option(False, "show progress bars", cli=False)

    def __post_init__(self) -> None:
        """Validate every field."""
        self.methods = tuple(m for m in parse_methods(self.methods) if isinstance(m, str))
        self.targets = tuple(parse_targets(self.targets))
        if self.subset not in SUBSETS:
            raise LensDigitsError(f"unknown subset {self.subset!r}; choose {', '.join(SUBSETS)}")
        if self.prepend_bos not in (None, True, False):
            raise LensDigitsError(f"prepend_bos must be True, False or None (follow the model), got {self.prepend_bos!r}")
        if self.chat not in (True, False):
            raise LensDigitsError(f"chat must be True or False, got {self.chat!r}")
        if self.cache_train not in (True, False):
            raise LensDigitsError(f"cache_train must be True or False, got {self.cache_train!r}")
        if self.norm not in NORMS:
            raise LensDigitsError(f"unknown norm {self.norm!r}; choose final (the model's final norm) or none")
        if self.probe_scope not in PROBE_SCOPES:
            raise LensDigitsError(f"unknown probe scope {self.probe_scope!r}; choose {', '.join(PROBE_SCOPES)}")
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        if self.pairs is not None:
            _check_int("pairs", self.pairs, 1, 1_000_000, flag="--pairs")
        self.within = _int_list("within", self.within, 0)
        self.thresholds = _float_list("thresholds", self.thresholds)
        _check_int("n_boot", self.n_boot, 1, 1_000_000, flag="--bootstrap")
        if self.seeds is not None:
            self.seeds = _int_list("seeds", self.seeds, 0)
            if not self.seeds:
                raise LensDigitsError("seeds is empty; give e.g. 0,1,2 (or leave it out for one draw)")
        if self.device is not None:
            self.device = str(self.device)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        d = dataclasses.asdict(self)
        for key in ("methods", "targets", "within", "thresholds"):
            d[key] = list(d[key])
        d["seeds"] = None if self.seeds is None else list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepConfig":
        """Inverse of :meth:`to_dict`; unknown keys (from a newer version) are skipped with a warning."""
        return cls(**known_fields(cls, d))


def known_fields(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``d`` that are fields of dataclass ``cls``; warns once about the others."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in d if k not in names)
    if unknown:
        warnings.warn(f"{cls.__name__}: skipped unknown setting(s) {unknown} (written by a newer lens-digits?)", stacklevel=3)
    return {k: v for k, v in d.items() if k in names}
