"""The logit lens: each layer's residual through the model's own readout.

Each layer's residual is normalised by the final norm with its *own*
statistics, unembedded and passed through the model's output transforms
(:class:`~lens_digits.model.readout.Readout`); the prediction is the top-1 over the
full vocabulary. At the last layer this is exactly the model's own prediction.
"""

from lens_digits.methods.base import register_method
from lens_digits.methods.lenses.base import Lens


@register_method
class LogitLens(Lens):
    """Top-1 of the model's final norm, unembedding and output transforms at each layer (nothing done to the residual).

    >>> import lens_digits as ld
    >>> lens = LogitLens.from_model(ld.testing.tiny_model())
    >>> lens.settings()["readout"]["steps"][1]
    'unembedding'
    """

    name = "logit_lens"
