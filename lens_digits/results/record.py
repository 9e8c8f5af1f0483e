"""``run.json``: what a run did, in a versioned record that later versions can still read.

:class:`RunRecord` is written as ``run.json`` and read back by
:meth:`RunRecord.from_dict`, which accepts records of every earlier schema
(schema 1: releases before the ``format`` key) and skips, with a warning, keys
that a newer version added. ``schema`` is bumped whenever a field changes
meaning; readers of older schemas fill what is missing with ``None``.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lens_digits._stack import user_stacklevel
from lens_digits.errors import RunDirectoryError
from lens_digits.settings import known_fields
from lens_digits.storage.paths import RUN_FORMAT

RUN_SCHEMA = 2
"""1: no ``format``/``schema`` keys; 2: adds ``format``, ``schema``, ``sweep``, ``encoding``, ``readout``."""


@dataclass
class RunRecord:
    """Everything ``run.json`` says about a run.

    Attributes:
        model: Name, kind (HookedTransformer or TransformerBridge), layers, width,
            vocabulary, context, dtype and device.
        task: The :class:`~lens_digits.problems.tasks.TaskConfig` of the problems.
        sweep: The :class:`~lens_digits.runs.config.SweepConfig` of the sweep.
        methods: Each decoder's settings (the probes' chosen C, the readout the lenses apply, ...).
        targets: Targets scored.
        encoding: What was fed: the BOS actually prepended (or not), the chat
            template, and per digit scale one example's tokens, so that any cell can
            be recomputed with plain Hugging Face.
        n_problems: Problems per split (all of them are in ``prompts.jsonl``).
        model_runs: Problems the model ran on: ``residuals`` (forward passes that
            kept residuals: the test problems, plus train and validation ones when a
            decoder fits) and ``greedy`` (greedy answers, for target ``model`` and the
            subsets: test problems only).
        versions: Python and library versions.
        seconds: Wall time of the sweep.
        command: The command line (shell-quoted), for runs made by ``lens-digits``.
        cache: Where the residuals were kept (``cache/`` in a run directory), the
            shard size, and how many problems' residuals were read back or computed.
        refits: Methods added later from the cache (``lens-digits fit``), with when.
        study: For a run made by ``lens-digits study``: the unit it ran (model,
            task and settings) and the model's parameter count.
    """

    format: str = RUN_FORMAT
    schema: int = RUN_SCHEMA
    model: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, Any] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    encoding: dict[str, Any] = field(default_factory=dict)
    n_problems: dict[str, int] = field(default_factory=dict)
    model_runs: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None
    command: str | None = None
    cache: dict[str, Any] | None = None
    refits: list[dict[str, Any]] = field(default_factory=list)
    study: dict[str, Any] | None = None
    # Schema 1 kept these at the top level; schema 2 has them in ``sweep`` too.
    subset: str | None = None
    prepend_bos: bool | None = None
    chat: bool | None = None
    seed: int | None = None
    batch_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what ``run.json`` holds).

        Returns:
            Every field by name.
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "run.json") -> "RunRecord":
        """Read a record of any schema up to this one; unknown keys are skipped with a warning.

        Returns:
            The record; fields an older schema lacks keep their defaults.

        Raises:
            RunDirectoryError: It is not a record (not an object, or a field of the wrong kind), its
                ``format`` is not a lens-digits run, or its ``schema`` is not a positive integer.
        """
        if not isinstance(d, dict):
            raise RunDirectoryError(f"{where}: expected a JSON object, got {type(d).__name__}")
        d = dict(d)
        d.setdefault("format", RUN_FORMAT)
        d.setdefault("schema", 1)
        if d["format"] != RUN_FORMAT:
            raise RunDirectoryError(f"{where}: format {d['format']!r} is not a lens-digits run ({RUN_FORMAT!r})")
        if not isinstance(d["schema"], int) or d["schema"] < 1:
            raise RunDirectoryError(f"{where}: schema must be a positive integer, got {d['schema']!r}")
        if d["schema"] > RUN_SCHEMA:
            import warnings

            warnings.warn(
                f"{where} has schema {d['schema']}, newer than this version's {RUN_SCHEMA}: upgrade lens-digits",
                stacklevel=user_stacklevel(),
            )
        record = cls(**known_fields(cls, d))
        for name in ("model", "task", "sweep", "methods", "encoding", "n_problems", "model_runs", "versions"):
            if not isinstance(getattr(record, name), dict):
                raise RunDirectoryError(f"{where}: {name!r} must be an object, got {type(getattr(record, name)).__name__}")
        if not isinstance(record.targets, list):
            raise RunDirectoryError(f"{where}: 'targets' must be a list")
        return record
