"""The decoder interface and its registry.

A decoder turns the residuals of a :class:`~lens_digits.residuals.ResidualSet`
into per-problem, per-layer correctness for a target (``first`` or
``answer``). It never sees the model, only what :meth:`Decoder.from_model`
chose to take from it (the logit lens takes the final norm and unembedding), so
a decoder can be fitted and scored on saved residuals.

To add one, subclass :class:`Decoder`, give it a unique ``name`` and register it:

>>> import torch
>>> @register_decoder
... class Oracle(Decoder):
...     name = "oracle_doc_example"
...     def score(self, data, target):
...         return Scores(torch.ones(len(data), data.n_columns, dtype=torch.bool))
>>> "oracle_doc_example" in DECODERS
True
"""

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from jaxtyping import Bool, Float
from torch import Tensor

from lens_digits.config import TARGETS
from lens_digits.errors import LensDigitsError
from lens_digits.residuals import ResidualSet

Target = Literal["first", "answer", "model"]
__all__ = ["DECODERS", "TARGETS", "Decoder", "Scores", "Target", "make_decoder", "register_decoder"]


@dataclass
class Scores:
    """What a decoder found, per test problem and layer.

    Attributes:
        correct: Whether the decoder read the target right.
        metrics: Extra per-problem numbers; each becomes a column of the grid
            holding its mean over the cell's problems (for example ``gold_rank``).
        breakdown: Finer scores, as ``{column: {label: Scores}}``; each label
            becomes rows of the grid with ``column`` set to ``label`` (the
            probes' digit ``place``). The main rows have ``column`` = ``"all"``.
        applies: Problems these scores are about (None: all). Cells count only
            those, and a scale with none gets no rows (a 2-digit sum has no
            thousands place).
    """

    correct: Bool[Tensor, "problem layer"]
    metrics: dict[str, Float[Tensor, "problem layer"]] = field(default_factory=dict)
    breakdown: dict[str, dict[str, "Scores"]] = field(default_factory=dict)
    applies: Bool[Tensor, " problem"] | None = None

    def __len__(self) -> int:
        """Number of problems."""
        return self.correct.shape[0]

    @classmethod
    def concat(cls, parts: "list[Scores]") -> "Scores":
        """The scores of several problem sets, one after another (for example several seeds' draws).

        A metric or breakdown row that some parts lack is NaN, or does not apply,
        on those parts' problems.
        """
        import torch

        def nan_like(p: "Scores") -> Tensor:
            return torch.full(p.correct.shape, float("nan"))

        correct = torch.cat([p.correct.cpu() for p in parts])
        names = list(dict.fromkeys(k for p in parts for k in p.metrics))
        metrics = {k: torch.cat([p.metrics[k].double().cpu() if k in p.metrics else nan_like(p).double() for p in parts]) for k in names}
        applies = None
        if any(p.applies is not None for p in parts):
            applies = torch.cat([p.applies.cpu() if p.applies is not None else torch.ones(len(p), dtype=torch.bool) for p in parts])
        breakdown: dict[str, dict[str, Scores]] = {}
        for column in dict.fromkeys(c for p in parts for c in p.breakdown):
            labels = dict.fromkeys(label for p in parts for label in p.breakdown.get(column, {}))
            breakdown[column] = {
                label: cls.concat([p.breakdown.get(column, {}).get(label) or cls._absent(p) for p in parts]) for label in labels
            }
        return cls(correct, metrics, breakdown, applies)

    @classmethod
    def _absent(cls, like: "Scores") -> "Scores":
        """Scores that apply to none of ``like``'s problems."""
        import torch

        return cls(torch.zeros_like(like.correct.cpu()), {}, {}, torch.zeros(len(like), dtype=torch.bool))


class Decoder(abc.ABC):
    """Reads a target from each layer's residual stream.

    Subclasses set ``name`` and implement :meth:`score`; those that learn
    something override :meth:`fit`, which sees only train and validation
    problems.
    """

    name: ClassVar[str]
    targets: ClassVar[tuple[str, ...]] = ("first", "answer")
    fits: ClassVar[bool] = False
    """True for decoders that learn from train residuals (probes): only then does a sweep run the model on
    train and validation problems; otherwise :meth:`fit` gets their tokens and gold ids without residuals."""
    needs_model: ClassVar[bool] = False
    """True for decoders built from the model (lenses: its unembedding): ``lens-digits fit`` cannot refit
    them from cached residuals alone."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Warn when a class defines ``fit`` but never says whether it learns from residuals (``fits``)."""
        super().__init_subclass__(**kwargs)
        says = any("fits" in vars(k) for k in cls.__mro__ if k is not Decoder)
        if "fit" in vars(cls) and not says:
            import warnings

            warnings.warn(
                f"{cls.__name__} defines fit() but not `fits`: set `fits = True` if it learns from train residuals (a sweep then "
                "runs the model on train and validation problems), or `fits = False` if it reads their tokens only",
                stacklevel=2,
            )

    @classmethod
    def from_model(cls, model: Any, **options: Any) -> "Decoder":
        """Build the decoder for ``model`` (default: ignore the model)."""
        return cls(**options)

    def fit(self, train: ResidualSet, val: ResidualSet) -> None:  # noqa: B027 - optional hook
        """Learn from train problems, choosing settings on validation ones (default: nothing)."""

    @abc.abstractmethod
    def score(self, data: ResidualSet, target: Target) -> Scores:
        """Score every problem of ``data`` at every layer."""

    def settings(self) -> dict[str, Any]:
        """JSON-ready settings recorded in ``run.json``."""
        return {}


DECODERS: dict[str, type[Decoder]] = {}


def register_decoder(cls: type[Decoder]) -> type[Decoder]:
    """Class decorator adding a decoder to the registry.

    Registering the same class again (a notebook cell run twice: same module and
    qualified name) replaces the earlier one with a warning; another class
    claiming a taken name is refused.
    """
    import warnings

    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise LensDigitsError(f"{cls.__name__} needs a class attribute `name` to be registered")
    old = DECODERS.get(name)
    if old is not None and old is not cls:
        if (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise LensDigitsError(
                f"a decoder named {name!r} is already registered ({old.__module__}.{old.__qualname__}); pick another name"
            )
        warnings.warn(f"decoder {name!r} ({cls.__qualname__}) registered again: the new definition replaces the old one", stacklevel=2)
    DECODERS[name] = cls
    return cls


def make_decoder(method: "str | Decoder", model: Any, **options: Any) -> Decoder:
    """A decoder instance from a registered name (built with ``options``), or the instance itself."""
    if isinstance(method, Decoder):
        return method
    if method not in DECODERS:
        raise LensDigitsError(f"unknown method {method!r}; registered decoders: {sorted(DECODERS)}")
    return DECODERS[method].from_model(model, **options)
