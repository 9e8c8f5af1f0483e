"""Methods: what reads each layer (lenses and probes, the decoders) or acts on it (interventions).

:mod:`lens_digits.methods.base` holds the interface (:class:`Method`, :class:`Decoder`,
:class:`Intervention`) and the registry; :mod:`~lens_digits.methods.lenses`,
:mod:`~lens_digits.methods.probes` and :mod:`~lens_digits.methods.interventions`
hold the built-in methods, each a folder of its own kind. Importing this package
registers them.
"""

from lens_digits.methods.base import (
    METHODS,
    Decoder,
    Intervention,
    Method,
    import_modules,
    make_method,
    method_class,
    register_method,
)
from lens_digits.methods.interventions.attribution import AttributionPatching, OperandAttributionPatching
from lens_digits.methods.interventions.dla import DirectLogitAttribution
from lens_digits.methods.interventions.helix import HelixProbe
from lens_digits.methods.interventions.patching import ActivationPatching, OperandPatching
from lens_digits.methods.lenses.base import Lens
from lens_digits.methods.lenses.fourier import FourierFeatures
from lens_digits.methods.lenses.jacobian import JacobianLens
from lens_digits.methods.lenses.logit import LogitLens
from lens_digits.methods.lenses.tuned import TunedLens
from lens_digits.methods.meaning import accuracy_means, is_signed
from lens_digits.methods.probes.circular import CircularProbe
from lens_digits.methods.probes.linear import LinearProbe
from lens_digits.methods.probes.weights import ProbeWeights
from lens_digits.methods.scores import Scores, Target

__all__ = [
    "METHODS",
    "ActivationPatching",
    "AttributionPatching",
    "CircularProbe",
    "Decoder",
    "DirectLogitAttribution",
    "FourierFeatures",
    "HelixProbe",
    "Intervention",
    "JacobianLens",
    "Lens",
    "LinearProbe",
    "LogitLens",
    "Method",
    "OperandAttributionPatching",
    "OperandPatching",
    "ProbeWeights",
    "Scores",
    "Target",
    "TunedLens",
    "accuracy_means",
    "import_modules",
    "is_signed",
    "make_method",
    "method_class",
    "register_method",
]
