"""The logit lens: each layer's residual through the model's own readout.

Each layer's residual is normalised by the final norm with its *own*
statistics, unembedded and passed through the model's output transforms
(:class:`~lens_digits.readout.Readout`); the prediction is the top-1 over the
full vocabulary. At the last layer this is exactly the model's own prediction.
"""

from collections.abc import Sequence
from typing import Any

from jaxtyping import Float, Int
from torch import Tensor

from lens_digits.decoders.base import register_decoder
from lens_digits.decoders.lens import WITHIN, Lens
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

    def __init__(
        self,
        readout: Readout,
        max_logits: int | None = None,
        final: Readout | None = None,
        n_layers: int | None = None,
        *,
        within: Sequence[int] = WITHIN,
    ) -> None:
        """Read through ``readout``; ``max_logits`` caps how many logits are held at once.

        With a readout that skips the final norm (``norm="none"``), ``final`` (the
        model's own readout) reads the last column, layer ``n_layers``, so that it
        stays the model's own prediction. ``within``: the k of the ``within_k`` scores.
        """
        super().__init__(readout.d_vocab, max_logits, tokenizer=readout.tokenizer, within=within)
        self.readout = readout
        self.final = final
        self.n_layers = n_layers

    @classmethod
    def from_model(cls, model: Any, norm: str = "final", **options: Any) -> "LogitLens":
        """A logit lens through ``model``'s final norm (``norm="final"``, or none: ``"none"``), unembedding and output transforms."""
        from lens_digits.adapter import ModelAdapter

        adapter = ModelAdapter.wrap(model)
        if norm == "final":
            return cls(Readout(adapter), **options)
        return cls(Readout(adapter, norm=norm), final=Readout(adapter), n_layers=adapter.n_layers, **options)

    def layer_logits(self, resid: Float[Tensor, "row d_model"], layer: int) -> Float[Tensor, "row d_vocab"]:
        """The readout of the residual (the model's own at the final residual), in the model's dtype."""
        if self.final is not None and layer == self.n_layers:
            return self.final(resid, upcast=False)
        return self.readout(resid, upcast=False)

    def reduce_layer(
        self, resid: Float[Tensor, "row d_model"], layer: int, gold: Int[Tensor, " row"]
    ) -> tuple[Int[Tensor, " row"], Float[Tensor, " row"], Float[Tensor, " row"]]:
        """The readout's tiled reduction (never a row's whole logits at once)."""
        readout = self.final if self.final is not None and layer == self.n_layers else self.readout
        return readout.reduce(resid, gold)

    def settings(self) -> dict[str, Any]:
        """The readout it applies (norm and output transforms)."""
        return {"readout": self.readout.describe(), "within": list(self.within)}
