"""The logit lens: each layer's residual through the model's own readout.

Each layer's residual is normalised by the final norm with its *own*
statistics, unembedded and passed through the model's output transforms
(:class:`~lens_digits.readout.Readout`); the prediction is the top-1 over the
full vocabulary. At the last layer this is exactly the model's own prediction.
"""

from typing import Any

from jaxtyping import Float
from torch import Tensor

from lens_digits.decoders.base import register_decoder
from lens_digits.decoders.lens import Lens
from lens_digits.readout import Readout


@register_decoder
class LogitLens(Lens):
    """Top-1 of the model's final norm, unembedding and output transforms at each layer.

    >>> import lens_digits as ld
    >>> lens = LogitLens.from_model(ld.testing.tiny_model())
    >>> lens.settings()["readout"]["steps"][1]
    'unembedding'
    """

    name = "logit_lens"

    def __init__(self, readout: Readout, max_logits: int = 2**25) -> None:
        """Read through ``readout``; ``max_logits`` caps how many logits are held at once."""
        super().__init__(readout.d_vocab, max_logits)
        self.readout = readout

    @classmethod
    def from_model(cls, model: Any, **options: Any) -> "LogitLens":
        """A logit lens reading through ``model``'s final norm, unembedding and output transforms."""
        return cls(Readout(model), **options)

    def layer_logits(self, resid: Float[Tensor, "row d_model"], layer: int) -> Float[Tensor, "row d_vocab"]:
        """The readout of the residual, whatever its layer (in the model's dtype)."""
        return self.readout(resid, upcast=False)

    def settings(self) -> dict[str, Any]:
        """The readout it applies (norm and output transforms)."""
        return {"readout": self.readout.describe()}
