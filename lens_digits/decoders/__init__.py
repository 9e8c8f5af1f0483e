"""Decoders that read the answer from each layer's residual stream."""

from lens_digits.decoders.base import DECODERS, TARGETS, Decoder, Scores, make_decoder, register_decoder
from lens_digits.decoders.circular_probe import CircularProbe
from lens_digits.decoders.lens import Lens
from lens_digits.decoders.logit_lens import LogitLens
from lens_digits.decoders.probes import LinearProbe, ProbeWeights
from lens_digits.decoders.tuned_lens import TunedLens
from lens_digits.optim import SolverResult, fit_multinomial
from lens_digits.readout import Readout

__all__ = [
    "DECODERS",
    "CircularProbe",
    "TARGETS",
    "Decoder",
    "Lens",
    "LinearProbe",
    "LogitLens",
    "ProbeWeights",
    "Readout",
    "Scores",
    "TunedLens",
    "SolverResult",
    "fit_multinomial",
    "make_decoder",
    "register_decoder",
]
