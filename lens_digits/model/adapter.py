"""The model, wrapped once: what the package asks of a HookedTransformer or TransformerBridge.

Every part of the package that needs the model (encoding, residual
collection, greedy decoding, the lenses' readout, ``run.json``) takes a
:class:`ModelAdapter`. It is built once, at an entry point (``run_sweep``,
``lens-digits fit``, a study unit, the model card of ``train-model``), by
:meth:`ModelAdapter.wrap`, which accepts either kind of TransformerLens model
(or an adapter, unchanged); :class:`TransformerLensModel` says what the package
asks of the model inside it.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens_digits.errors import LensDigitsError, NonFiniteError
from lens_digits.model.finite import weights_note
from lens_digits.model.loading import model_kind
from lens_digits.model.readout import Readout


@runtime_checkable
class TransformerLensModel(Protocol):
    """What the package asks of a TransformerLens model (a ``HookedTransformer`` of 3.x or a ``TransformerBridge``).

    Its configuration (``cfg.n_layers``, ``d_model``, ``d_vocab``, ``n_ctx``,
    ``default_prepend_bos``), its tokenizer, hooked forward passes with the
    residual hooks ``blocks.{i}.hook_resid_pre/post``, and the final norm and
    unembedding that every lens reads through.
    """

    cfg: Any
    tokenizer: Any
    ln_final: Any
    unembed: Any

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any:
        """A forward pass with TransformerLens forward hooks.

        Returns:
            What the forward pass returns for its ``return_type`` (nothing with ``return_type=None``).
        """

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The weights.

        Returns:
            An iterator over the model's parameters.
        """

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """The weights by name.

        Returns:
            An iterator over ``(name, parameter)`` pairs.
        """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A forward pass.

        Returns:
            The model's output for its ``return_type`` (``"logits"``: the logits at every position).
        """


class _Stop(Exception):
    """Raised by a hook to end a forward pass once what is needed is kept."""


@dataclass(eq=False)
class ModelAdapter:
    """A TransformerLens model and the facts about it that the package uses.

    Attributes:
        model: The ``HookedTransformer`` or ``TransformerBridge``.
        kind: Which of the two it is.
        name: ``cfg.model_name`` (a hub name, a folder, or ``unknown``).
        n_layers: Transformer blocks (the grid has ``n_layers + 1`` layer columns).
        d_model: Width of the residual stream.
        d_vocab: Vocabulary size.
        n_ctx: Longest input in tokens (None if the model does not say).
        dtype: Floating dtype of the parameters.
        device: Where input tokens go (the first parameter's device).

    >>> import lens_digits as ld
    >>> adapter = ModelAdapter.wrap(ld.testing.tiny_model())
    >>> adapter.kind, adapter.n_layers, len(adapter.resid_hook_names)
    ('TransformerBridge', 2, 3)
    """

    model: TransformerLensModel
    kind: Literal["HookedTransformer", "TransformerBridge"]
    name: str
    n_layers: int
    d_model: int
    d_vocab: int
    n_ctx: int | None
    dtype: torch.dtype
    device: torch.device
    _readout: Readout | None = field(default=None, repr=False)  # the model's readout, built on first use
    _kv_cache_ok: bool | None = field(default=None, repr=False)  # whether greedy decoding may use a key-value cache (kvcache)

    @classmethod
    def wrap(cls, model: Any) -> "ModelAdapter":
        """Wrap a TransformerLens model (an adapter is returned as it is).

        Returns:
            The adapter of ``model`` (``model`` itself if it is an adapter already).

        Raises:
            LensDigitsError: ``model`` is neither a HookedTransformer nor a TransformerBridge.
        """
        if isinstance(model, ModelAdapter):
            return model
        kind = model_kind(model)
        cfg = model.cfg
        n_ctx = getattr(cfg, "n_ctx", None)
        return cls(
            model=model,
            kind=kind,
            name=str(getattr(cfg, "model_name", "unknown")),
            n_layers=int(cfg.n_layers),
            d_model=int(cfg.d_model),
            d_vocab=int(cfg.d_vocab),
            n_ctx=int(n_ctx) if n_ctx else None,
            dtype=next(p for p in model.parameters() if p.is_floating_point()).dtype,
            device=next(model.parameters()).device,
        )

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer; a clear error if it has none.

        Raises:
            LensDigitsError: the model has no tokenizer.
        """
        tok = getattr(self.model, "tokenizer", None)
        if tok is None:
            raise LensDigitsError(
                "the model has no tokenizer; load it from a checkpoint folder that has one, or build it with "
                "lens_digits.build_model(tokenizer=...)"
            )
        return tok

    def bos_id(self, prepend_bos: bool | None = None) -> int | None:
        """The BOS id put before each prompt (None: none); ``prepend_bos`` None follows the model's ``default_prepend_bos``.

        Returns:
            The tokenizer's BOS token id, or None if no BOS is put before prompts.

        Raises:
            LensDigitsError: ``prepend_bos=True`` and the tokenizer has no BOS token.
        """
        if prepend_bos is False or (prepend_bos is None and not getattr(self.model.cfg, "default_prepend_bos", True)):
            return None
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if prepend_bos and bos is None:
            raise LensDigitsError("prepend_bos=True but the tokenizer has no BOS token")
        return bos

    @property
    def resid_hook_names(self) -> list[str]:
        """Hook names of layer columns ``0..n_layers``: each block's input, then the last block's output."""
        return [f"blocks.{i}.hook_resid_pre" for i in range(self.n_layers)] + [f"blocks.{self.n_layers - 1}.hook_resid_post"]

    def run_with_hooks(self, tokens: Int[Tensor, "batch pos"], fwd_hooks: list[tuple[str, Any]], **forward: Any) -> None:
        """Run the model for its hooks only (no logits are computed or returned); ``forward`` goes to its forward pass."""
        self.model.run_with_hooks(tokens, return_type=None, fwd_hooks=fwd_hooks, **forward)

    def logits(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        """The model's own output logits.

        Returns:
            The logits over the vocabulary at every position of every sequence.
        """
        return self.model(tokens, return_type="logits")

    def last_logits(
        self, tokens: Int[Tensor, "batch pos"], hooks: Sequence[tuple[str, Any]] = (), **forward: Any
    ) -> Float[Tensor, "batch d_vocab"]:
        """The model's own logits at the last position only (what greedy decoding reads).

        The forward pass stops at the final residual; only its last position goes
        through the model's readout (final norm, unembedding, output transforms),
        instead of every position. ``hooks`` are TransformerLens forward hooks
        run on the way (an intervention's), before the final residual is read;
        ``forward`` goes to the model's forward pass (a key-value cache, see
        :mod:`lens_digits.model.kvcache`). The logits are on the tokens' device (a
        model split over devices unembeds on its last one).

        Returns:
            The logits over the vocabulary at the last position of each sequence, on the tokens' device.

        Raises:
            NonFiniteError: the logits (or the final residual) hold NaN or infinite values.
        """
        kept: list[Tensor] = []

        def grab(x: Tensor, hook: Any) -> None:
            kept.append(x[:, -1].clone())
            raise _Stop

        try:
            self.run_with_hooks(tokens, [*hooks, (self.resid_hook_names[-1], grab)], **forward)
        except _Stop:
            pass
        if self._readout is None:
            self._readout = Readout(self)
        logits = self._readout(kept[0], upcast=False)
        if not bool(torch.isfinite(logits).all()):
            what = "logits are" if bool(torch.isfinite(kept[0]).all()) else "final residual is"
            raise NonFiniteError(f"the model's {what} not finite (NaN or infinite) while decoding greedily; {weights_note(self.model)}")
        return logits.to(tokens.device)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for ``run.json``.

        Returns:
            The model's name, kind, sizes (``n_layers``, ``d_model``, ``d_vocab``, ``n_ctx``), dtype and device, by name.
        """
        return {
            "name": self.name,
            "kind": self.kind,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "d_vocab": self.d_vocab,
            "n_ctx": self.n_ctx,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }
