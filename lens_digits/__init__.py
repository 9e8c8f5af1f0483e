"""lens_digits: where in a transformer an arithmetic answer becomes readable, by digit scale.

Names are imported on first use, so ``lens-digits --help`` and light modules
(``lens_digits.rundir``) start without loading torch.

>>> import lens_digits as ld
>>> grid = ld.run_sweep(ld.testing.tiny_model(), scales="1-2", n_per_scale=20, target="first")
>>> grid.figure().layout.title.text
'Accuracy Breakdown'
"""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "DECODERS": "lens_digits.decoders",
    "Decoder": "lens_digits.decoders",
    "LogitLens": "lens_digits.decoders",
    "LinearProbe": "lens_digits.decoders",
    "Readout": "lens_digits.readout",
    "ModelAdapter": "lens_digits.adapter",
    "Scores": "lens_digits.decoders",
    "register_decoder": "lens_digits.decoders",
    "BoundaryMergeError": "lens_digits.errors",
    "ContextLengthError": "lens_digits.errors",
    "LensDigitsError": "lens_digits.errors",
    "ModelLoadError": "lens_digits.errors",
    "OutputError": "lens_digits.errors",
    "RunDirectoryError": "lens_digits.errors",
    "AccuracyGrid": "lens_digits.grid",
    "build_model": "lens_digits.models",
    "load_model": "lens_digits.models",
    "ResidualSet": "lens_digits.residuals",
    "collect_residuals": "lens_digits.residuals",
    "SweepConfig": "lens_digits.config",
    "run_sweep": "lens_digits.sweep",
    "encode_problems": "lens_digits.targets",
    "OPERATIONS": "lens_digits.operations",
    "TEMPLATES": "lens_digits.tasks",
    "Operation": "lens_digits.operations",
    "Problem": "lens_digits.tasks",
    "TaskConfig": "lens_digits.tasks",
    "generate_problems": "lens_digits.tasks",
    "register_operation": "lens_digits.operations",
    "load_builtin_model": "lens_digits.builtin",
    "train_model": "lens_digits.builtin",
    "ActivationPatching": "lens_digits.patching",
    "OperandPatching": "lens_digits.patching",
    "Intervention": "lens_digits.patching",
    "register_intervention": "lens_digits.patching",
}
_SUBMODULES = (
    "adapter",
    "builtin",
    "config",
    "decoders",
    "errors",
    "generate",
    "grid",
    "models",
    "operations",
    "patching",
    "plotting",
    "readout",
    "record",
    "residuals",
    "rundir",
    "sweep",
    "targets",
    "tasks",
    "testing",
)

__all__ = [
    "AccuracyGrid",
    "Decoder",
    "LensDigitsError",
    "LinearProbe",
    "LogitLens",
    "Operation",
    "ResidualSet",
    "Scores",
    "SweepConfig",
    "TaskConfig",
    "__version__",
    "load_builtin_model",
    "load_model",
    "register_decoder",
    "register_operation",
    "run_sweep",
]
"""What a notebook needs. Other names stay reachable as attributes (``ld.generate_problems``,
``ld.ModelLoadError``, ...) and in their modules (``lens_digits.tasks``, ``lens_digits.errors``, ...)."""

if TYPE_CHECKING:
    from lens_digits.builtin import load_builtin_model
    from lens_digits.config import SweepConfig
    from lens_digits.decoders import Decoder, LinearProbe, LogitLens, Scores, register_decoder
    from lens_digits.errors import LensDigitsError
    from lens_digits.grid import AccuracyGrid
    from lens_digits.models import load_model
    from lens_digits.operations import Operation, register_operation
    from lens_digits.residuals import ResidualSet
    from lens_digits.sweep import run_sweep
    from lens_digits.tasks import TaskConfig


def __getattr__(name: str) -> Any:
    """Import a public name (or submodule) on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"lens_digits.{name}")
    else:
        raise AttributeError(f"module 'lens_digits' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Public names, for tab completion."""
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
