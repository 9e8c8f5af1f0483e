"""Methods: what reads each layer (lenses, probes) or acts on it (interventions), behind one interface and one registry.

A *method* is what ``--methods``, ``grid.csv``'s ``method`` column and
``run.json``'s ``methods`` name. Every method has a unique :attr:`Method.name`,
the targets it reads, and declares on its class, in :attr:`Method.uses`, which
of the sweep's settings it takes (its seed, the lenses' ``within``, a probe's
scope, ...): :func:`make_method` builds any method, built-in or a plug-in's,
from those declarations, for ``run_sweep``, ``lens-digits run``, ``fit`` and
studies alike. There are two kinds:

- a :class:`Decoder` reads residuals only: it may learn from train residuals
  (:meth:`Decoder.fit`) and scores test residuals, so ``lens-digits fit`` can
  refit it from a run's cache;
- an :class:`Intervention` runs the model with something changed (activation
  patching), given the model and the test problems' residuals.

To add one, subclass a kind, give it a ``name`` and register it:

>>> import torch
>>> @register_method
... class Oracle(Decoder):
...     name = "oracle_doc_example"
...     def score(self, data, target):
...         return Scores(torch.ones(len(data), data.n_columns, dtype=torch.bool))
>>> method_class("oracle_doc_example") is Oracle
True

Methods of an installed package are found through the entry-point group
``lens_digits.methods`` (an entry point names a module that registers its
methods, or a method class), and ``--import MODULE`` (:func:`import_modules`)
imports any module that registers some, so the command line sees them too.
"""

import abc
import importlib
import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from lens_digits._stack import user_stacklevel
from lens_digits.errors import LensDigitsError
from lens_digits.methods.scores import Scores, Target
from lens_digits.residuals.collect import ResidualSet

if TYPE_CHECKING:
    from lens_digits.methods.examples import Example
    from lens_digits.model.adapter import ModelAdapter
    from lens_digits.problems.tasks import Problem

__all__ = [
    "ENTRY_POINT_GROUP",
    "METHODS",
    "Decoder",
    "Intervention",
    "Method",
    "Scores",
    "Target",
    "import_modules",
    "make_method",
    "method_class",
    "register_method",
]

ENTRY_POINT_GROUP = "lens_digits.methods"
"""Entry-point group through which installed packages offer methods (``[project.entry-points."lens_digits.methods"]``)."""

SETTINGS = ("seed", "progress", "within", "norm", "probe_scope", "probe_max_iter", "pairs", "batch_size", "template", "chat")
"""The sweep settings a method may take (in :attr:`Method.uses`): the task's seed, the sweep's progress, the lenses'
``within`` and ``norm``, the probes' ``probe_scope`` and ``probe_max_iter``, patching's ``pairs`` and ``batch_size``, and
the prompts' ``template`` and ``chat``."""


class Method(abc.ABC):
    """A way of reading each layer column of a model, per digit scale: one row block of the grid per target.

    Class attributes a method sets:

    - ``name``: unique; what ``--methods`` and the grid call it.
    - ``targets``: the targets it can read (``first``, ``answer``, ``model``).
    - ``uses``: which sweep settings it takes, as ``{setting: keyword of from_model}``
      (settings are those of :data:`SETTINGS`, e.g. ``{"seed": "seed", "probe_scope": "scope"}``).
    - ``needs_model``: built from the model (a lens reads through its unembedding),
      so ``lens-digits fit`` needs ``--model`` to refit it.
    """

    name: ClassVar[str]
    targets: ClassVar[tuple[str, ...]] = ("first", "answer")
    uses: ClassVar[Mapping[str, str]] = {}
    needs_model: ClassVar[bool] = False
    runs_model: ClassVar[bool] = False
    """True for interventions: scoring runs the model, so a run's cache alone cannot score it."""
    accuracy_means: ClassVar[str] = "accuracy"
    """What a cell's accuracy is, in figures (an intervention's: its flip rate)."""
    signed_metrics: ClassVar[tuple[str, ...]] = ()
    """Metrics that may be negative (a logit difference): figures draw them on a scale symmetric about zero."""

    options: dict[str, Any]
    """The keyword arguments it was built with (:func:`make_method`), JSON-ready: :meth:`settings` records them."""

    @classmethod
    def from_model(cls, model: "ModelAdapter | None", **options: Any) -> "Method":
        """Build the method for ``model`` (default: ignore the model, pass the options to the constructor).

        Returns:
            The method, built with ``options``.
        """
        return cls(**options)

    def settings(self) -> dict[str, Any]:
        """JSON-ready settings for ``run.json`` (default: the options it was built with).

        Returns:
            A new dict of the settings by name.
        """
        return dict(getattr(self, "options", {}))

    def examples(self, data: ResidualSet, target: Target, rows: Sequence[int]) -> "list[Example] | None":
        """What the method read for the problems ``rows`` of ``data`` at every layer column (default: None, no examples).

        The report's example panel shows them (see :mod:`lens_digits.methods.examples`). A sweep calls this right
        after scoring ``data`` for ``target`` (``score``), with the same set, so a method may reuse what scoring
        computed; ``rows`` are a fixed sample of the problems its cells count, at most
        :data:`~lens_digits.methods.examples.N_EXAMPLES` per digit scale.

        Returns:
            One :class:`~lens_digits.methods.examples.Example` per row, in the order of ``rows``; or None, where the
            method has nothing to show.
        """
        return None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Check the declared settings early: a typo in ``uses`` is an error where the class is defined.

        Raises:
            LensDigitsError: The class's ``uses`` names a setting that is not one of :data:`SETTINGS`.
        """
        super().__init_subclass__(**kwargs)
        unknown = sorted(set(vars(cls).get("uses", {})) - set(SETTINGS))
        if unknown:
            raise LensDigitsError(f"{cls.__name__}.uses names unknown sweep setting(s) {unknown}; the settings are {list(SETTINGS)}")


class Decoder(Method):
    """A method that reads residuals only: it may learn from train residuals, and scores test residuals.

    Subclasses set ``name`` and implement :meth:`score`; those that learn
    something override :meth:`fit`, which sees only train and validation
    problems, and set ``fits = True`` when it reads their residuals.
    """

    fits: ClassVar[bool] = False
    """True for decoders that learn from train residuals (probes): only then does a sweep run the model on
    train and validation problems; otherwise :meth:`fit` gets their tokens and gold ids without residuals."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Warn when a class defines ``fit`` but never says whether it learns from residuals (``fits``)."""
        super().__init_subclass__(**kwargs)
        says = any("fits" in vars(k) for k in cls.__mro__ if k is not Decoder)
        if "fit" in vars(cls) and not says:
            warnings.warn(
                f"{cls.__name__} defines fit() but not `fits`: set `fits = True` if it learns from train residuals (a sweep then "
                "runs the model on train and validation problems), or `fits = False` if it reads their tokens only",
                stacklevel=user_stacklevel(),
            )

    def observe(self, train: ResidualSet) -> None:  # noqa: B027 - optional hook
        """What the base classes note about the train problems before :meth:`fit` (a lens: its baseline); subclasses need not call it."""

    def fit(self, train: ResidualSet, val: ResidualSet) -> None:  # noqa: B027 - optional hook
        """Learn from train problems, choosing settings on validation ones (default: nothing)."""

    def prepare(self, train: ResidualSet, val: ResidualSet) -> None:
        """What a sweep calls before scoring: :meth:`observe`, then :meth:`fit`."""
        self.observe(train)
        self.fit(train, val)

    @abc.abstractmethod
    def score(self, data: ResidualSet, target: Target) -> Scores:
        """Score every problem of ``data`` at every layer column.

        Returns:
            Per problem and layer column, whether ``target`` was read right, with any metrics and breakdown rows.
        """


class Intervention(Method):
    """A method that runs the model with something changed, per test problem and layer column.

    Subclasses set ``name`` (and ``targets``) and implement :meth:`score`, which
    gets the model (a :class:`~lens_digits.model.adapter.ModelAdapter`) and the
    test problems' residuals, and returns :class:`~lens_digits.methods.scores.Scores`
    like a decoder's.
    """

    runs_model = True
    accuracy_means = "flip rate"

    def prepare(self, model: "ModelAdapter", train: ResidualSet, val: ResidualSet) -> None:  # noqa: B027 - optional hook
        """Learn from train problems before :meth:`score` (default: nothing).

        ``train`` and ``val`` hold the problems and their token ids (residuals only where a decoder of the sweep fits);
        an intervention that reads other positions runs ``model`` on them itself
        (:class:`~lens_digits.methods.interventions.helix.HelixProbe`).
        """

    @abc.abstractmethod
    def score(self, model: "ModelAdapter", data: ResidualSet, target: Target) -> Scores:
        """Score every problem of ``data`` at every layer column, running ``model``.

        Returns:
            Per problem and layer column, whether the intervention gave the target's outcome (e.g. a flip).
        """

    def annotate(self, problems: "Sequence[Problem]") -> "list[Problem]":
        """The problems as ``prompts.jsonl`` should record them after :meth:`score` (default: unchanged).

        Returns:
            The problems, some of them with notes (a patched problem's source).
        """
        return list(problems)


METHODS: dict[str, type[Method]] = {}
"""Every registered method class by name (built-in ones, the user's, and plug-ins once loaded)."""

_plugins_loaded = False


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry.

    Registering the same class again (a notebook cell run twice: same module and
    qualified name) replaces the earlier one with a warning; another class
    claiming a taken name is refused.

    Returns:
        The class, unchanged.

    Raises:
        LensDigitsError: The class has no ``name``, is not a :class:`Decoder` or
            :class:`Intervention`, or another class already has the name.
    """
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise LensDigitsError(f"{cls.__name__} needs a class attribute `name` to be registered")
    if not (isinstance(cls, type) and issubclass(cls, (Decoder, Intervention))):
        raise LensDigitsError(f"{getattr(cls, '__name__', cls)!r} is not a Decoder or an Intervention; subclass one of them")
    old = METHODS.get(name)
    if old is not None and old is not cls:
        if (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise LensDigitsError(f"a method named {name!r} is already registered ({old.__module__}.{old.__qualname__}); pick another name")
        warnings.warn(
            f"method {name!r} ({cls.__qualname__}) registered again: the new definition replaces the old one", stacklevel=user_stacklevel()
        )
    METHODS[name] = cls
    return cls


def load_plugins() -> None:
    """Import the methods that installed packages offer through the entry-point group ``lens_digits.methods`` (once).

    An entry point names a module (importing it registers its methods) or a
    method class (registered here if it is not yet).

    Raises:
        LensDigitsError: A plug-in cannot be imported; the message names the package and the entry point.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
        except Exception as e:  # a plug-in's own error: the user needs to know which one
            dist = getattr(getattr(ep, "dist", None), "name", "?")
            raise LensDigitsError(f"the lens-digits plug-in {ep.name!r} ({ep.value}, package {dist}) cannot be imported: {e}") from None
        if isinstance(loaded, type) and issubclass(loaded, Method) and METHODS.get(getattr(loaded, "name", "")) is not loaded:
            register_method(loaded)


def import_modules(modules: Iterable[str]) -> None:
    """Import modules that register methods (``--import MODULE`` on the command line, ``imports = [...]`` in a study).

    Raises:
        LensDigitsError: A module cannot be imported; the message names it and why.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as e:  # a missing module or its own error: one line naming it
            raise LensDigitsError(
                f"cannot import module {module!r} (given with --import): {type(e).__name__}: {e}; is it installed, or on PYTHONPATH?"
            ) from None


def method_class(name: str) -> type[Method]:
    """The registered method class of ``name`` (plug-ins are loaded the first time a name is looked up).

    Returns:
        The class.

    Raises:
        LensDigitsError: No method has that name; the message lists those that do.
    """
    if name not in METHODS:
        load_plugins()
    if name not in METHODS:
        raise LensDigitsError(f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def make_method(
    method: "str | Method",
    model: "ModelAdapter | None",
    settings: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Method:
    """A method instance: a given instance as it is, or the registered class of a name, built for ``model``.

    The class takes, of the sweep's ``settings``, those its :attr:`~Method.uses`
    names (under their keywords), then ``options`` (the user's, by keyword);
    what it was built with is kept as its ``options`` for ``run.json``.

    Returns:
        The method, ready to fit (a decoder) or to score.

    Raises:
        LensDigitsError: Unknown name, or a method built from the model (a lens) without a model.
    """
    if isinstance(method, Method):
        return method
    cls = method_class(method)
    if cls.needs_model and model is None:
        raise LensDigitsError(f"method {method!r} reads through the model's unembedding: give the model (--model)")
    given = settings or {}
    kwargs = {keyword: given[setting] for setting, keyword in cls.uses.items() if setting in given} | dict(options or {})
    built = cls.from_model(model, **kwargs)
    built.options = {k: _json_ready(v) for k, v in kwargs.items() if k != "progress"}
    return built


def _json_ready(value: Any) -> Any:
    """A value as ``run.json`` can hold it (tuples as lists; anything else JSON cannot hold as its text).

    Returns:
        The value after a round trip through JSON, or its ``str`` where JSON cannot hold it.
    """
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return str(value)


# ---- names of releases before 0.2, kept for one release ------------------------------------------------

_DEPRECATED = {
    "DECODERS": "METHODS (filtered to Decoder subclasses)",
    "INTERVENTIONS": "METHODS (filtered to Intervention subclasses)",
    "register_decoder": "register_method",
    "register_intervention": "register_method",
    "make_decoder": "make_method",
}


def __getattr__(name: str) -> Any:
    """Names of earlier releases, with a ``DeprecationWarning`` naming their successor.

    Returns:
        What the name now stands for: :data:`METHODS` filtered to one kind, :func:`register_method`, or a wrapper of :func:`make_method`.

    Raises:
        AttributeError: ``name`` is not one of the deprecated names.
    """
    if name not in _DEPRECATED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"lens_digits: {name} is deprecated; use {_DEPRECATED[name]}", DeprecationWarning, stacklevel=2)
    if name == "DECODERS":
        return {n: c for n, c in METHODS.items() if issubclass(c, Decoder)}
    if name == "INTERVENTIONS":
        return {n: c for n, c in METHODS.items() if issubclass(c, Intervention)}
    if name in ("register_decoder", "register_intervention"):
        return register_method
    return lambda method, model, **options: make_method(method, model, None, options)
