"""Decoders that read the answer from each layer's residual stream."""

from lens_digits.decoders.base import DECODERS, TARGETS, Decoder, Scores, make_decoder, register_decoder
from lens_digits.decoders.logit_lens import LogitLens, Readout

__all__ = ["DECODERS", "TARGETS", "Decoder", "LogitLens", "Readout", "Scores", "make_decoder", "register_decoder"]
