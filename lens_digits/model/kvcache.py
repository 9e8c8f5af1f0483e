"""Greedy decoding that runs each prompt through the model once: a key-value cache, used where it agrees with recomputation.

The reference for a greedy token is the model run on the whole sequence so
far, its final residual at the last position read out
(:meth:`~lens_digits.model.adapter.ModelAdapter.last_logits`). Running every prompt
again for each new token costs a forward pass over the prompt per token; a
key-value cache computes the same logits, up to rounding, from the new token
alone. :func:`greedy_tokens` uses one where the package can drive it, and never
lets it change a token:

1. **Where there is one.** A TransformerBridge over a Hugging Face model gets
   transformers' ``DynamicCache`` through its forward pass; a HookedTransformer
   its own ``HookedTransformerKeyValueCache``. A bridge over a module that is
   not a Hugging Face model (the built-in model) has none: it recomputes.
   (transformers 5 hands the cache to attention layers as ``cache``, while
   TransformerLens 4.3's attention components read ``past_key_values`` and
   otherwise leave the cache empty; :func:`_pass_cache_to_attention` hands it on.)
2. **Checked before use.** The first time a model decodes more than one token,
   a few rows are decoded both ways for a few steps; every step's logits must agree to within
   the tolerance below. If they do not (or the cached pass fails), a warning
   says so and the model recomputes from then on.
3. **No near ties.** At every cached step, a row whose two best logits are
   within the tolerance is decoded again from its whole sequence, so a rounding
   difference between the two ways cannot change which token wins.

The tolerance is relative to the row's largest logit: ``1e-4`` in float32
(the two ways differ by less than ``1e-6`` of it on the test models), ``3e-2`` in
16-bit floats.
"""

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens_digits._stack import user_stacklevel
from lens_digits.errors import NonFiniteError
from lens_digits.model.adapter import ModelAdapter

_RELATIVE_TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-4}
_HALF_TOLERANCE = 3e-2
CHECK_ROWS, CHECK_STEPS = 4, 4
"""Rows of the first batch, and steps, decoded both ways before a model's cache is used."""


def tolerance(adapter: ModelAdapter, logits: Float[Tensor, "batch d_vocab"]) -> Float[Tensor, " batch"]:
    """How far apart two logits of a row may be and still count as a possible tie, for the model's dtype.

    Returns:
        One tolerance per row: the dtype's relative tolerance times one plus the row's largest absolute logit.
    """
    rel = _RELATIVE_TOLERANCE.get(adapter.dtype, _HALF_TOLERANCE)
    return rel * (1.0 + logits.abs().amax(-1))


@dataclass(frozen=True)
class KeyValueCache:
    """A fresh key-value cache for one batch, as keyword arguments of the model's forward pass."""

    forward: dict[str, Any]
    explicit_mask: bool = False  # HookedTransformer: pass an all-ones mask (it would otherwise mask pad-token ids)

    def kwargs(self, tokens: Tensor) -> dict[str, Any]:
        """What to pass to the forward pass that feeds ``tokens``.

        Returns:
            The cache's keyword arguments, with an all-ones ``attention_mask`` the shape of ``tokens`` for a HookedTransformer.
        """
        return {**self.forward, "attention_mask": torch.ones_like(tokens)} if self.explicit_mask else self.forward


def new_cache(adapter: ModelAdapter, batch: int) -> KeyValueCache | None:
    """A fresh key-value cache for ``batch`` rows (None: the model has none the package can drive).

    Returns:
        A HookedTransformer's own cache, or transformers' ``DynamicCache`` for a bridge over a Hugging Face model;
        None for any other model.
    """
    model = adapter.model
    if adapter.kind == "HookedTransformer":
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        cache = TransformerLensKeyValueCache.init_cache(model.cfg, adapter.device, batch)
        return KeyValueCache({"past_kv_cache": cache}, explicit_mask=True)
    hf = getattr(model, "original_model", None)
    config = getattr(hf, "config", None)
    if hf is None or config is None or not hasattr(model, "blocks"):
        return None
    from transformers import DynamicCache

    try:
        kv = DynamicCache(config=config)
    except TypeError:  # transformers before 4.56 takes no config
        kv = DynamicCache()
    if "cache" in inspect.signature(hf.forward).parameters:  # transformers 5 renamed past_key_values
        return KeyValueCache({"cache": kv, "use_cache": True})
    return KeyValueCache({"past_key_values": kv})


@contextlib.contextmanager
def _pass_cache_to_attention(adapter: ModelAdapter) -> Iterator[None]:
    """Give each bridge attention component the cache under the name it reads, whichever name transformers passes."""
    if adapter.kind == "HookedTransformer":
        yield
        return

    def pre(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
            kwargs["past_key_values"] = kwargs["cache"]
        return args, kwargs

    handles = [
        block.attn.register_forward_pre_hook(pre, with_kwargs=True)
        for block in getattr(adapter.model, "blocks", [])
        if hasattr(block, "attn")
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


Finished = Callable[[Tensor], Sequence[bool] | Tensor]
"""``finished(new_tokens)``: for each row of the ``(batch, steps so far)`` new tokens, whether its answer is complete."""


def _all_done(finished: Finished | None, new: Tensor) -> bool:
    return finished is not None and bool(torch.as_tensor(finished(new)).all())


def _recomputed(
    adapter: ModelAdapter, tokens: Tensor, n: int, hooks: Sequence[tuple[str, Any]], finished: Finished | None = None
) -> tuple[Tensor, list[Tensor]]:
    """Up to ``n`` greedy tokens, the whole sequence run at every step (the reference), and each step's logits.

    Returns:
        ``(new_tokens, logits)``: the ``(batch, steps)`` new token ids (fewer than ``n`` steps once ``finished``
        says every row is complete), and each step's last-position logits.
    """
    start, logits = tokens.shape[1], []
    for _ in range(n):
        logits.append(adapter.last_logits(tokens, hooks))
        tokens = torch.cat([tokens, logits[-1].argmax(-1, keepdim=True)], dim=1)
        if _all_done(finished, tokens[:, start:]):
            break
    return tokens[:, start:], logits


def _cached_logits(
    adapter: ModelAdapter, cache: KeyValueCache, tokens: Tensor, forced: Tensor, hooks: Sequence[tuple[str, Any]]
) -> list[Tensor]:
    """Each step's last-position logits through ``cache`` (fresh), feeding ``forced`` as the new tokens.

    Returns:
        One ``(batch, d_vocab)`` tensor of logits per column of ``forced``: the first after the prompt, each next after a forced token.
    """
    out = []
    with _pass_cache_to_attention(adapter):
        out.append(adapter.last_logits(tokens, hooks, **cache.kwargs(tokens)))
        for j in range(forced.shape[1] - 1):
            out.append(adapter.last_logits(forced[:, j : j + 1], (), **cache.kwargs(forced[:, j : j + 1])))
    return out


def cache_agrees(adapter: ModelAdapter, tokens: Int[Tensor, "batch pos"], n: int, hooks: Sequence[tuple[str, Any]] = ()) -> float | None:
    """Decode ``tokens`` both ways for ``n`` steps; the largest logit difference relative to the tolerance (None: no cache).

    A value at most 0.25 means the cache may be used: its logits are within a
    quarter of the tolerance of the recomputed ones at every step.

    Returns:
        The largest difference between cached and recomputed logits, over steps and rows, divided by the row's
        tolerance; None if the model has no cache the package can drive.
    """
    cache = new_cache(adapter, tokens.shape[0])
    if cache is None:
        return None
    ref_tokens, ref_logits = _recomputed(adapter, tokens, n, hooks)
    cached = _cached_logits(adapter, cache, tokens, ref_tokens, hooks)
    return max(float(((c - r).abs().amax(-1) / tolerance(adapter, r)).max()) for c, r in zip(cached, ref_logits, strict=True))


def _usable(adapter: ModelAdapter, tokens: Tensor, n: int) -> bool:
    """Whether the model's cache may be used; checked once per adapter, on the first rows of its first batch, without hooks.

    Returns:
        True if the model has a cache and its logits agreed with recomputed ones (a warning says why otherwise).

    Raises:
        NonFiniteError: The model's logits are not finite while checking (re-raised: the model itself is broken).
    """
    if adapter._kv_cache_ok is None:
        try:
            ratio = cache_agrees(adapter, tokens[:CHECK_ROWS], min(n, CHECK_STEPS))
            why = f"its logits differ from recomputed ones by {ratio:.3g} times the tolerance" if ratio is not None else ""
        except NonFiniteError:  # the model itself is broken, with or without a cache
            raise
        except Exception as e:  # a forward pass that does not take a cache
            ratio, why = float("inf"), f"a cached forward pass failed ({type(e).__name__}: {e})"
        if ratio is not None and ratio > 0.25:
            warnings.warn(
                f"lens_digits: the key-value cache of this {adapter.kind} does not agree with recomputing the whole sequence "
                f"({why}); greedy decoding recomputes the whole sequence at every step instead (exact, slower)",
                stacklevel=user_stacklevel(),
            )
        adapter._kv_cache_ok = ratio is not None and ratio <= 0.25
    return bool(adapter._kv_cache_ok)


@torch.inference_mode()
def greedy_tokens(
    adapter: ModelAdapter,
    tokens: Int[Tensor, "batch pos"],
    n: int,
    hooks: Sequence[tuple[str, Any]] = (),
    finished: Finished | None = None,
) -> Int[Tensor, "batch steps"]:
    """``n`` greedy new tokens after each row of ``tokens`` (equal-length prompts), equal to recomputing every step.

    ``hooks`` are TransformerLens forward hooks held on the prompt's positions
    (an intervention's); with a cache they run on the prompt's pass only, since
    the prompt's keys and values are not computed again. ``finished`` (see
    :data:`Finished`) stops decoding early, after the step at which every row's
    answer is complete; then fewer than ``n`` columns come back.

    Returns:
        The ``(batch, steps)`` new token ids, ``n`` steps or fewer when ``finished`` stops early.
    """
    if n <= 1 or not _usable(adapter, tokens, n):
        return _recomputed(adapter, tokens, n, hooks, finished)[0]
    cache = new_cache(adapter, tokens.shape[0])
    assert cache is not None
    seq = tokens
    with _pass_cache_to_attention(adapter):
        step_input, step_hooks = tokens, hooks
        for _ in range(n):
            logits = adapter.last_logits(step_input, step_hooks, **cache.kwargs(step_input))
            top2 = logits.topk(2, dim=-1).values
            nxt = logits.argmax(-1)
            close = (top2[:, 0] - top2[:, 1]) <= tolerance(adapter, logits)
            if bool(close.any()):  # decide near ties by the reference
                nxt[close] = adapter.last_logits(seq, hooks).argmax(-1)[close] if hooks else adapter.last_logits(seq[close]).argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            if _all_done(finished, seq[:, tokens.shape[1] :]):
                break
            step_input, step_hooks = nxt[:, None], ()
    return seq[:, tokens.shape[1] :]
