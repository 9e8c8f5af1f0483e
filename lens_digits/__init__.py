"""lens_digits: where in a transformer an arithmetic answer becomes readable, by digit scale.

>>> import lens_digits as ld
>>> grid = ld.run_sweep(ld.testing.tiny_model(), scales="1-2", n_per_scale=20, target="first")
>>> grid.figure().layout.title.text
'Accuracy Breakdown'
"""

from lens_digits import testing
from lens_digits.builtin import load_builtin_model, train_model
from lens_digits.decoders import DECODERS, Decoder, LogitLens, Readout, Scores, register_decoder
from lens_digits.errors import BoundaryMergeError, ContextLengthError, LensDigitsError, ModelLoadError
from lens_digits.grid import AccuracyGrid
from lens_digits.models import build_model, load_model
from lens_digits.residuals import ResidualSet, collect_residuals
from lens_digits.sweep import run_sweep
from lens_digits.targets import encode_problems
from lens_digits.tasks import OPERATIONS, TEMPLATES, Operation, Problem, TaskConfig, generate_problems, register_operation

__version__ = "0.1.0"

__all__ = [
    "DECODERS",
    "OPERATIONS",
    "TEMPLATES",
    "AccuracyGrid",
    "BoundaryMergeError",
    "ContextLengthError",
    "Decoder",
    "LensDigitsError",
    "LogitLens",
    "ModelLoadError",
    "Operation",
    "Problem",
    "Readout",
    "ResidualSet",
    "Scores",
    "TaskConfig",
    "__version__",
    "build_model",
    "collect_residuals",
    "encode_problems",
    "generate_problems",
    "load_builtin_model",
    "load_model",
    "register_decoder",
    "register_operation",
    "run_sweep",
    "testing",
    "train_model",
]
