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
MAX_BATCH_SIZE = 1_000_000


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
        batch_size: Problems per forward pass.
        device: Where residuals are kept and decoders run (None: the model's device).
        progress: Show progress bars.
    """

    methods: Sequence[str] | str = ("logit_lens",)
    targets: Sequence[str] | str = ("answer",)
    subset: str = "all"
    prepend_bos: bool | None = None
    chat: bool = False
    probe_scope: str = "per_scale"
    batch_size: int = 64
    device: str | None = None
    progress: bool = False

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
        if self.probe_scope not in PROBE_SCOPES:
            raise LensDigitsError(f"unknown probe scope {self.probe_scope!r}; choose {', '.join(PROBE_SCOPES)}")
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        if self.device is not None:
            self.device = str(self.device)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        d = dataclasses.asdict(self)
        d["methods"] = list(self.methods)
        d["targets"] = list(self.targets)
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
