"""lens_digits: where in a transformer an arithmetic answer becomes readable, by digit scale.

The package's folders follow the flow of a sweep: :mod:`~lens_digits.problems`
-> :mod:`~lens_digits.model` -> :mod:`~lens_digits.residuals` ->
:mod:`~lens_digits.methods` -> :mod:`~lens_digits.results` ->
:mod:`~lens_digits.runs`, with :mod:`~lens_digits.storage` (safe writing) below
them all and :mod:`~lens_digits.cli` and :mod:`~lens_digits.builtin` (the
shipped models) beside. Names are imported on first use, so ``lens-digits
--help`` starts without loading torch.

>>> import lens_digits as ld
>>> grid = ld.run_sweep(ld.testing.tiny_model(), scales="1-2", n_per_scale=20, target="first")
>>> grid.figure().layout.title.text
'Accuracy Breakdown'
"""

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from lens_digits import _aliases

__version__ = "0.2.0"

_EXPORTS = {
    "BoundaryMergeError": "lens_digits.errors",
    "ClusterError": "lens_digits.errors",
    "ContextLengthError": "lens_digits.errors",
    "ModelLoadError": "lens_digits.errors",
    "NonFiniteError": "lens_digits.errors",
    "OutputError": "lens_digits.errors",
    "RunDirectoryError": "lens_digits.errors",
    "TransformerLensVersionError": "lens_digits.errors",
    "AccuracyGrid": "lens_digits.results.grid",
    "CircularProbe": "lens_digits.methods.probes.circular",
    "Decoder": "lens_digits.methods.base",
    "Intervention": "lens_digits.methods.base",
    "Lens": "lens_digits.methods.lenses.base",
    "LensDigitsError": "lens_digits.errors",
    "LinearProbe": "lens_digits.methods.probes.linear",
    "LogitLens": "lens_digits.methods.lenses.logit",
    "Method": "lens_digits.methods.base",
    "ModelAdapter": "lens_digits.model.adapter",
    "Operation": "lens_digits.problems.operations",
    "ResidualSet": "lens_digits.residuals.collect",
    "Scores": "lens_digits.methods.scores",
    "SweepConfig": "lens_digits.runs.config",
    "TaskConfig": "lens_digits.problems.tasks",
    "TunedLens": "lens_digits.methods.lenses.tuned",
    "build_model": "lens_digits.model.loading",
    "generate_problems": "lens_digits.problems.tasks",
    "load_builtin_model": "lens_digits.builtin",
    "load_model": "lens_digits.model.loading",
    "register_method": "lens_digits.methods.base",
    "register_operation": "lens_digits.problems.operations",
    "run_sweep": "lens_digits.runs.sweep",
}

SUBMODULES = (
    "builtin",
    "cli",
    "errors",
    "methods",
    "model",
    "problems",
    "residuals",
    "results",
    "runs",
    "settings",
    "storage",
    "testing",
)
"""The documented submodules: the stages of the flow, and ``errors``, ``settings``, ``testing``."""

__all__ = [
    "__version__",
    "AccuracyGrid",
    "BoundaryMergeError",
    "CircularProbe",
    "ClusterError",
    "ContextLengthError",
    "Decoder",
    "Intervention",
    "Lens",
    "LensDigitsError",
    "LinearProbe",
    "LogitLens",
    "Method",
    "ModelAdapter",
    "ModelLoadError",
    "NonFiniteError",
    "Operation",
    "OutputError",
    "ResidualSet",
    "RunDirectoryError",
    "Scores",
    "SweepConfig",
    "TaskConfig",
    "TransformerLensVersionError",
    "TunedLens",
    "build_model",
    "generate_problems",
    "load_builtin_model",
    "load_model",
    "register_method",
    "register_operation",
    "run_sweep",
]

_MOVED = {
    # names of releases before 0.2: still reachable with a DeprecationWarning naming where they live now
    "OPERATIONS": "lens_digits.problems.operations",
    "TEMPLATES": "lens_digits.problems.tasks",
    "Problem": "lens_digits.problems.tasks",
    "encode_problems": "lens_digits.problems.targets",
    "Readout": "lens_digits.model.readout",
    "collect_residuals": "lens_digits.residuals.collect",
    "train_model": "lens_digits.builtin.train",
    "ActivationPatching": "lens_digits.methods.interventions.patching",
    "OperandPatching": "lens_digits.methods.interventions.patching",
}
_RENAMED = {
    "register_decoder": ("lens_digits.methods.base", "register_method"),
    "register_intervention": ("lens_digits.methods.base", "register_method"),
    "DECODERS": ("lens_digits.methods.base", "METHODS"),
}

if TYPE_CHECKING:
    from lens_digits.builtin import load_builtin_model
    from lens_digits.errors import (
        BoundaryMergeError,
        ClusterError,
        ContextLengthError,
        LensDigitsError,
        ModelLoadError,
        NonFiniteError,
        OutputError,
        RunDirectoryError,
        TransformerLensVersionError,
    )
    from lens_digits.methods.base import Decoder, Intervention, Method, register_method
    from lens_digits.methods.lenses.base import Lens
    from lens_digits.methods.lenses.logit import LogitLens
    from lens_digits.methods.lenses.tuned import TunedLens
    from lens_digits.methods.probes.circular import CircularProbe
    from lens_digits.methods.probes.linear import LinearProbe
    from lens_digits.methods.scores import Scores
    from lens_digits.model.adapter import ModelAdapter
    from lens_digits.model.loading import build_model, load_model
    from lens_digits.problems.operations import Operation, register_operation
    from lens_digits.problems.tasks import TaskConfig, generate_problems
    from lens_digits.residuals.collect import ResidualSet
    from lens_digits.results.grid import AccuracyGrid
    from lens_digits.runs.config import SweepConfig
    from lens_digits.runs.sweep import run_sweep


def __getattr__(name: str) -> Any:
    """Import a public name (or a documented submodule) on first use; names of earlier releases warn where they moved.

    Returns:
        The named object, or the submodule.

    Raises:
        AttributeError: ``name`` is no public name, documented submodule or name of an earlier release.
    """
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in SUBMODULES:
        value = importlib.import_module(f"lens_digits.{name}")
    elif name in _MOVED:
        warnings.warn(f"lens_digits.{name} is deprecated: import it from {_MOVED[name]}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    elif name in _RENAMED:
        module, new = _RENAMED[name]
        warnings.warn(f"lens_digits.{name} is deprecated: use {module}.{new}", DeprecationWarning, stacklevel=2)
        value = getattr(importlib.import_module(module), new)
        return value if name != "DECODERS" else importlib.import_module(module).DECODERS
    elif name in _aliases.OLD_MODULES:
        return importlib.import_module(f"lens_digits.{name}")  # the alias module warns
    else:
        raise AttributeError(f"module 'lens_digits' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names and the documented submodules, for tab completion.

    Returns:
        Those names, sorted.
    """
    return sorted(set(__all__) | set(SUBMODULES))
