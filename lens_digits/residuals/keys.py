"""What cached residuals were made with: a fingerprint of the weights, a hash of the tokenizer, and a shard's key.

A residual shard is valid only for the settings it records (:mod:`lens_digits.residuals.cache`);
these functions make that record and tell the first setting in which two differ.
"""

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch

from lens_digits.model.adapter import ModelAdapter
from lens_digits.problems.targets import EncodedProblem


def weights_fingerprint(model: Any) -> str:
    """A SHA-256 over every parameter's name, shape, dtype and a fixed sample of its values.

    The sample (the first and last 1,024 values and 4,096 evenly spaced ones of
    each tensor) is read exactly, so the fingerprint is the same on every load
    of the same weights, costs next to nothing on a GPU, and changes with any
    other checkpoint or fine-tune.

    Returns:
        The fingerprint, as a hexadecimal string.
    """
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda item: item[0]):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = torch.cat([flat[:1024], flat[::step][:4096], flat[-1024:]]).cpu()
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|".encode())
        h.update(sample.view(torch.uint8).numpy().tobytes() if sample.numel() else b"")
    return h.hexdigest()


def tokenizer_hash(tokenizer: Any) -> str:
    """A SHA-256 of the tokenizer's full definition (vocabulary, merges, normaliser, special tokens, chat template).

    Returns:
        The hash, as a hexadecimal string.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps(
        [getattr(tokenizer, "chat_template", None), getattr(tokenizer, "bos_token_id", None), type(tokenizer).__name__], default=str
    )
    return hashlib.sha256((text + extra).encode()).hexdigest()


def cache_key(adapter: ModelAdapter, task: dict[str, Any], bos: int | None, chat: bool, shard_size: int) -> dict[str, Any]:
    """What a shard's residuals depend on (besides its problems), JSON-ready.

    Returns:
        The key: the model's name, size, weights fingerprint, tokenizer hash and dtype, with ``bos``, ``chat``, ``task`` and ``shard_size``.
    """
    return {
        "model": adapter.name,
        "n_layers": adapter.n_layers,
        "d_model": adapter.d_model,
        "weights": weights_fingerprint(adapter.model),
        "tokenizer": tokenizer_hash(adapter.tokenizer),
        "dtype": str(adapter.dtype).replace("torch.", ""),
        "bos": bos,
        "chat": chat,
        "task": task,
        "shard_size": shard_size,
    }


def sweep_key(adapter: ModelAdapter, chat: bool, prepend_bos: bool | None, shard_size: int) -> dict[str, Any]:
    """The key of a sweep's shards, without the task (each draw adds its own): the BOS follows the sweep's settings.

    Returns:
        The :func:`cache_key` with an empty task.
    """
    bos = None if chat else adapter.bos_id(prepend_bos)
    return cache_key(adapter, {}, bos, chat, shard_size)


def _difference(mine: Any, theirs: Any, path: str = "") -> str | None:
    """The first setting (dotted path) where two keys differ, None if equal.

    Returns:
        That path with both values (``theirs`` as "there", ``mine`` as "in this run"); None if the keys are equal.
    """
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for k in sorted(set(mine) | set(theirs)):
            found = _difference(mine.get(k), theirs.get(k), f"{path}.{k}" if path else k)
            if found:
                return found
        return None
    return None if mine == theirs else f"{path} ({theirs!r} there, {mine!r} in this run)"


def _ids_hash(encoded: Sequence[EncodedProblem]) -> str:
    h = hashlib.sha256()
    for e in encoded:
        h.update(json.dumps([e.prompt_ids, e.answer_ids]).encode())
    return h.hexdigest()
