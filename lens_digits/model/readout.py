"""The model's own readout, applied to any residual: final norm, unembedding, output transforms.

Every lens reads through one :class:`Readout`, so that at the final residual
it gives exactly the model's own logits, including what some families do after
the unembedding (Gemma-2's ``final_logit_softcapping``, Cohere's logit scale,
Granite's logit division): under TransformerLens 4.x those come from the
architecture adapter's ``apply_output_logits_transform``; elsewhere from the
config's ``output_logits_soft_cap``.

It runs in the model's dtype on the unembedding's device, as the model's
forward does, and returns float32 logits.
"""

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens_digits.errors import LensDigitsError


def _softcap(cap: float) -> Callable[[Tensor], Tensor]:
    def transform(logits: Tensor) -> Tensor:
        return cap * torch.tanh(logits / cap)

    return transform


def output_transform(model: Any) -> tuple[Callable[[Tensor], Tensor] | None, list[str]]:
    """What the model does to its logits after the unembedding, and a description of it.

    Returns:
        ``(transform, descriptions)``: the function applied to the unembedding's logits (None if the model applies
        none), and a description of each thing it does.
    """
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    cap = float(cap) if cap is not None and float(cap) > 0 else None
    adapter = getattr(model, "adapter", None)
    method = getattr(type(adapter), "apply_output_logits_transform", None) if adapter is not None else None
    if adapter is not None and method is not None:
        from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter

        described = [f"soft-cap {cap:g} (cap * tanh(logits / cap))"] if cap else []
        if method is not ArchitectureAdapter.apply_output_logits_transform:
            described.insert(0, f"{type(adapter).__name__}.apply_output_logits_transform")
        return (adapter.apply_output_logits_transform if described else None), described
    if cap:
        return _softcap(cap), [f"soft-cap {cap:g} (cap * tanh(logits / cap))"]
    return None, []


def default_tile(device: torch.device) -> int:
    """Vocabulary columns per tile of the tiled reduction on ``device``.

    On a CPU, 2,048: a tile of a chunk's logits stays in cache while it is
    reduced (measured in ``benchmarks/sweep_floor.py``). On an accelerator,
    32,768: fewer, larger matrix products and kernel launches; a tile there has
    no cache to fit.

    Returns:
        The number of vocabulary columns per tile: 2,048 on a CPU, 32,768 on any other device.
    """
    return 2048 if torch.device(device).type == "cpu" else 32768


def _norm_name(module: Any) -> str:
    name = type(module).__name__
    inner = getattr(module, "original_component", None)
    return f"{name} ({type(inner).__name__})" if inner is not None else name


class Readout:
    """The model's final norm, unembedding and output transforms, as one function of a residual.

    >>> import torch, lens_digits as ld
    >>> model = ld.testing.tiny_model()
    >>> readout = Readout(model)
    >>> tokens = torch.tensor([[1, 5, 6, 67, 7, 70]])
    >>> _, cache = model.run_with_cache(tokens)
    >>> final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    >>> torch.equal(readout(final).argmax(-1), model(tokens).argmax(-1))
    True
    """

    def __init__(self, model: Any, norm: str = "final") -> None:
        """Take ``ln_final``, ``unembed`` and the output transforms from a model's :class:`~lens_digits.model.adapter.ModelAdapter`.

        (A HookedTransformer or TransformerBridge itself works too.)

        Args:
            model: The model.
            norm: ``"final"``: the model's final norm with each residual's own
                statistics (the logit lens); ``"none"``: the unembedding alone.

        Raises:
            LensDigitsError: ``norm`` is neither ``"final"`` nor ``"none"``.
        """
        if norm not in ("final", "none"):
            raise LensDigitsError(f"unknown norm {norm!r}; choose 'final' (the model's final norm) or 'none'")
        if hasattr(model, "resid_hook_names"):  # a ModelAdapter (what the package passes); else the TransformerLens model itself
            model = model.model
        self.tokenizer = getattr(model, "tokenizer", None)
        """The model's tokenizer (None if it has none): lenses turn top-1 tokens into numbers with it."""
        self.norm = norm
        self.ln_final = model.ln_final
        self.unembed = model.unembed
        # With a model split over devices the unembedding sits on the last one.
        self.device = next(model.unembed.parameters()).device
        self.dtype = next(p for p in model.unembed.parameters() if p.is_floating_point()).dtype
        self.d_vocab = int(model.cfg.d_vocab)
        self.n_layers = int(model.cfg.n_layers)
        """The model's blocks: layer column ``n_layers`` is its final residual."""
        self.transform, transforms = output_transform(model)
        self._weights: tuple[Tensor, Tensor | None] | bool | None = None  # (W_U, b_U) once checked; False: not a plain matrix
        steps = [f"final norm ({_norm_name(self.ln_final)}), the residual's own statistics"] if norm == "final" else []
        self.steps = [*steps, "unembedding", *transforms]

    @torch.inference_mode()
    def __call__(self, resid: Float[Tensor, "*batch d_model"], upcast: bool = True) -> Float[Tensor, "*batch d_vocab"]:
        """Logits of the residual as if it were the final one: float32, or the model's dtype with ``upcast=False``.

        Returns:
            The logits over the vocabulary for each residual, on the unembedding's device.
        """
        logits = self.logits(resid)
        return logits.float() if upcast else logits

    def logits(self, resid: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_vocab"]:
        """The same in the model's dtype, differentiable in ``resid`` (what training a tuned lens goes through).

        Returns:
            The logits over the vocabulary for each residual, in the model's dtype on the unembedding's device.
        """
        x = resid.to(self.device, self.dtype)
        if self.norm == "final":
            x = self.ln_final(x)
        logits = self.unembed(x)
        return self.transform(logits) if self.transform is not None else logits

    @torch.inference_mode()
    def reduce(
        self, resid: Float[Tensor, "row d_model"], gold: Int[Tensor, " row"], tile: int | None = None
    ) -> tuple[Int[Tensor, " row"], Float[Tensor, " row"], Float[Tensor, " row"]]:
        """Top-1, gold rank and gold log-probability of the readout of each residual row.

        The logits are made and reduced a tile of the vocabulary at a time
        (:func:`~lens_digits.model.reductions.reduce_tiled`) when the unembedding is a
        plain matrix (checked once against the model's own unembedding); otherwise
        all at once (:func:`~lens_digits.model.reductions.reduce_logits`). ``tile``:
        vocabulary columns per tile (default :func:`default_tile` of the device).

        Returns:
            ``(top1, rank, log_prob)`` per row: the top-1 token id, how many logits are strictly above the gold
            token's (0 where it is the top-1), and the gold token's log-probability (float32).
        """
        from lens_digits.model.reductions import reduce_logits, reduce_tiled

        weights = self._tiles()
        if weights is None:
            return reduce_logits(self.logits(resid), gold)
        x = resid.to(self.device, self.dtype)
        if self.norm == "final":
            x = self.ln_final(x)
        return reduce_tiled(x, weights[0], weights[1], gold, self.transform, tile or default_tile(self.device))

    def _tiles(self) -> tuple[Tensor, Tensor | None] | None:
        """``(W_U, b_U)`` if the unembedding is ``x @ W_U + b_U`` (the first call checks it), else None.

        Returns:
            The unembedding's weight matrix and bias (None where it has none or it is all zeros), or None if the
            unembedding is not that matrix product.
        """
        if self._weights is False:
            return None
        if self._weights is None:
            self._weights = False
            W = getattr(self.unembed, "W_U", None)
            b = getattr(self.unembed, "b_U", None)
            if isinstance(W, Tensor) and W.ndim == 2 and W.shape[1] == self.d_vocab:
                b = b if isinstance(b, Tensor) and b.shape == (self.d_vocab,) and bool(b.any()) else None
                probe = torch.randn(3, W.shape[0], generator=torch.Generator().manual_seed(0)).to(W.device, W.dtype)
                with torch.inference_mode():
                    want = self.unembed(probe).float()
                    got = (probe @ W + (b if b is not None else 0)).float()
                if torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()) + 1e-6):
                    self._weights = (W.detach(), None if b is None else b.detach())
        return self._weights if isinstance(self._weights, tuple) else None

    def describe(self) -> dict[str, Any]:
        """What the readout applies, for ``run.json``.

        Returns:
            ``norm`` (``"final"`` or ``"none"``) and ``steps``, a description of each step applied, in order.
        """
        return {"norm": self.norm, "steps": list(self.steps)}
