"""Settings of a sweep, validated in one place for the API, the command line and ``run.json``.

:class:`SweepConfig` holds what :func:`lens_digits.run_sweep` does beyond the
problems themselves (those are a :class:`~lens_digits.problems.tasks.TaskConfig`). Every
field is checked when the object is made, so a bad setting fails with the same
one-line :class:`~lens_digits.errors.LensDigitsError` from a notebook and from
``lens-digits run``, before a model is loaded. This module imports no torch.
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lens_digits.errors import LensDigitsError
from lens_digits.problems.targets import parse_targets
from lens_digits.settings import _check_int, _float_list, _int_list, known_fields, option, parse_methods

if TYPE_CHECKING:
    from lens_digits.problems.tasks import TaskConfig

SUBSETS = ("all", "solved", "unsolved")
PROBE_SCOPES = ("per_scale", "pooled")
NORMS = ("final", "none")
MAX_BATCH_SIZE = 1_000_000


@dataclass
class SweepConfig:
    """How a sweep reads the model, beyond which problems it runs.

    Args:
        methods: Method names (``logit_lens``, ``probe``, ``patch``, a plug-in's), a list or comma-separated.
        targets: ``first``, ``answer``, ``model``, ``both``, ``all`` or a list.
        subset: Score ``all`` test problems, or only those the model ``solved``
            (greedy answer exactly right), or the ``unsolved`` ones.
        prepend_bos: Put BOS before prompts; None follows the model's config.
        chat: Wrap prompts in the tokenizer's chat template (instruct models).
        probe_scope: For probes: ``per_scale`` or ``pooled``.
        probe_max_iter: For the linear probe: L-BFGS iterations per fit at most.
        pairs: For ``patch``: (source, target) pairs per digit scale (None: every test problem with a source).
        batch_size: Problems per forward pass.
        cache_train: Run the model on train and validation problems even when no method fits (their residuals are cached).
        device: Where residuals are kept and methods run (None: the model's device).
        within: Lenses: the k of the ``within_k`` numeric scores.
        thresholds: Accuracies whose first layer is an emergence layer.
        n_boot: Bootstrap resamples of the emergence layers' intervals.
        seeds: Several problem draws (their union is scored, and each draw alone); None: the task's seed.
        progress: Show progress bars.
    """

    methods: Sequence[str] | str = option(
        ("logit_lens",),
        "methods, comma-separated: logit_lens, tuned_lens, jacobian_lens, probe, circular_probe, patch, patch_operands, attribution, "
        "attribution_operands, dla, helix_probe, fourier (or your own: --import)",
        metavar="LIST",
    )
    targets: Sequence[str] | str = option(
        ("answer",),
        "what a method must read: first (first answer token), answer (the whole answer, teacher-forced), model (the "
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
    probe_max_iter: int = option(
        1000, "probe: L-BFGS iterations per fit at most (raise it where a sweep warns that fits reached it)", flag="--max-iter", metavar="N"
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
    device: str | None = option(None, "where residuals are kept and methods run (default: the model's device)", cli=False)
    progress: bool = option(False, "show progress bars", cli=False)

    def __post_init__(self) -> None:
        """Validate every field.

        Raises:
            LensDigitsError: A field has the wrong type or an impossible value; the message names it.
        """
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
        _check_int("probe_max_iter", self.probe_max_iter, 1, 1_000_000, flag="--max-iter")
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
        """JSON-ready settings.

        Returns:
            The fields by name, lists where the config holds tuples.
        """
        d = dataclasses.asdict(self)
        for key in ("methods", "targets", "within", "thresholds"):
            d[key] = list(d[key])
        d["seeds"] = None if self.seeds is None else list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepConfig":
        """Inverse of :meth:`to_dict`; unknown keys (from a newer version) are skipped with a warning.

        Returns:
            The config.
        """
        return cls(**known_fields(cls, d))


def method_settings(task: "TaskConfig", config: SweepConfig) -> dict[str, Any]:
    """The sweep settings a method may take (each method's ``uses`` says which): what ``run``, ``fit`` and studies offer.

    Returns:
        Setting name -> value (see :data:`lens_digits.methods.base.SETTINGS`).
    """
    return {
        "seed": task.seed,
        "progress": config.progress,
        "within": config.within,
        "norm": config.norm,
        "probe_scope": config.probe_scope,
        "probe_max_iter": config.probe_max_iter,
        "pairs": config.pairs,
        "batch_size": config.batch_size,
        "template": task.template,
        "chat": config.chat,
    }
