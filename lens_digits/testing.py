"""Offline tokenizers and tiny checkpoints, for tests, examples and user experiments.

Everything here is built locally with the ``tokenizers`` library and
``transformers``' model classes: nothing is downloaded. The three tokenizers
behave like the three number-tokenizer families of real models:

- :func:`char_tokenizer`: one token per character, so one per digit
  (Llama-2, Qwen, Mistral, Gemma).
- :func:`chunk_tokenizer`: digit runs cut into chunks of up to three from the
  left (Llama-3).
- :func:`bpe_tokenizer`: byte-level BPE trained on arithmetic text, which merges
  digit runs and glues a leading space onto them (GPT-2).
"""

import string
import tempfile
from pathlib import Path
from typing import Any

from lens_digits.model.tokenizers import word_tokenizer

CHARS = string.digits + string.ascii_letters + " +-*=:,.?()\n"

_FOLDER: tempfile.TemporaryDirectory[str] | None = None


def _reloaded(tok: Any, name: str) -> Any:
    """The tokenizer saved to and reloaded from a folder, so that it has a real ``name_or_path``.

    TransformerLens reads ``name_or_path`` to set up BOS handling. The folders sit in
    one temporary directory per process, removed when the process ends.

    Returns:
        The tokenizer loaded by ``AutoTokenizer`` from the folder ``name`` (saved there on first use).
    """
    from transformers import AutoTokenizer

    global _FOLDER
    if _FOLDER is None:
        _FOLDER = tempfile.TemporaryDirectory(prefix="lens_digits_tokenizers_")
    folder = Path(_FOLDER.name) / name
    if not folder.is_dir():
        tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def char_tokenizer() -> Any:
    """One token per character; ``<s>`` BOS, ``</s>`` EOS, ``<pad>`` padding.

    Returns:
        The tokenizer (ids 0-3 are ``<pad>``, ``<s>``, ``</s>``, ``<unk>``; then the characters of ``CHARS``).

    >>> char_tokenizer()("12+3=", add_special_tokens=False)["input_ids"]
    [5, 6, 67, 7, 70]
    """
    return _reloaded(word_tokenizer(list(CHARS)), "char")


def chunk_tokenizer() -> Any:
    """Digit runs in chunks of up to three digits from the left, other characters one each.

    Returns:
        The tokenizer, with the same special tokens as :func:`char_tokenizer`.

    >>> t = chunk_tokenizer()
    >>> [t.decode([i]) for i in t("12345+6=", add_special_tokens=False)["input_ids"]]
    ['123', '45', '+', '6', '=']
    """
    numbers = [str(i) for i in range(1000)] + [f"{i:02d}" for i in range(10)] + [f"{i:03d}" for i in range(100)]
    return _reloaded(word_tokenizer(list(dict.fromkeys(list(CHARS) + numbers)), split=r"\d{1,3}|[^\d]"), "chunks")


def bpe_tokenizer(vocab_size: int = 600) -> Any:
    """Byte-level BPE (GPT-2's pre-tokenizer) trained on arithmetic text, deterministic.

    Digit runs merge into multi-digit tokens and a space before a number is glued
    to it; BOS, EOS and padding are all ``<|endoftext|>``, as in GPT-2.

    Returns:
        The tokenizer, with a vocabulary of at most ``vocab_size`` tokens.

    >>> t = bpe_tokenizer()
    >>> len(t(" 12", add_special_tokens=False)["input_ids"])
    1
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = []
    for a in range(0, 100):
        for b in range(0, 100, 7):
            corpus += [f"{a}+{b}={a + b}", f"{a} + {b} = {a + b}", f"Calculate: {a} - {b} = {a - b}", f"{a}*{b}={a * b}"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    eot = "<|endoftext|>"
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, pad_token=eot, unk_token=eot)
    return _reloaded(fast, f"bpe{vocab_size}")


def tiny_model(kind: str = "bridge", tokenizer: Any = None, **overrides: Any) -> Any:
    """A random 2-layer model with :func:`char_tokenizer`, built in-process.

    Returns:
        The model (a ``TransformerBridge``, or a ``HookedTransformer`` with ``kind="hooked"``), in eval mode;
        ``overrides`` go to :func:`~lens_digits.model.loading.build_model`.
    """
    from lens_digits.model.loading import build_model

    return build_model(tokenizer=tokenizer or char_tokenizer(), kind=kind, **overrides)  # type: ignore[arg-type]


ARCHITECTURES = ("llama", "gpt2", "gpt_neox", "qwen2", "mistral", "gemma2")
"""Architectures :func:`save_checkpoint` can build (Hugging Face model types)."""


def _hf_config(arch: str, vocab: int, n_layers: int, d_model: int, n_heads: int, n_ctx: int, ids: dict[str, Any]) -> Any:
    import transformers

    kv = max(1, n_heads // 2)
    head_dim = d_model // n_heads
    llama_like = dict(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=kv,
        max_position_embeddings=n_ctx,
        **ids,
    )
    if arch == "llama":
        return transformers.LlamaConfig(**llama_like, tie_word_embeddings=False)
    if arch == "qwen2":
        return transformers.Qwen2Config(**llama_like, tie_word_embeddings=True)
    if arch == "mistral":
        return transformers.MistralConfig(**llama_like, head_dim=head_dim)
    if arch == "gemma2":
        return transformers.Gemma2Config(**llama_like, head_dim=head_dim)
    if arch == "gpt2":
        return transformers.GPT2Config(vocab_size=vocab, n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=n_ctx, **ids)
    if arch == "gpt_neox":
        neox: dict[str, Any] = dict(
            vocab_size=vocab,
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            intermediate_size=2 * d_model,
            max_position_embeddings=n_ctx,
            rotary_pct=0.25,
            **ids,
        )
        return transformers.GPTNeoXConfig(**neox)
    raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHITECTURES}")


def save_checkpoint(
    folder: str | Path,
    arch: str = "llama",
    tokenizer: Any = None,
    *,
    n_layers: int = 3,
    d_model: int = 32,
    n_heads: int = 4,
    n_ctx: int = 128,
    seed: int = 0,
) -> Path:
    """Save a random Hugging Face checkpoint (weights, config, tokenizer) to ``folder``.

    ``arch`` is one of :data:`ARCHITECTURES`: ``llama`` (RMSNorm, rotary),
    ``gpt2`` (LayerNorm, learned positions), ``gpt_neox`` (Pythia: parallel
    attention and MLP, partial rotary), ``qwen2`` (tied embeddings), ``mistral``,
    ``gemma2`` (scaled embeddings, pre- and post-norms, logit soft-capping). Loads
    with ``lens_digits.load_model(folder)`` or plain
    ``transformers.AutoModelForCausalLM.from_pretrained(folder)``.

    Returns:
        ``folder``, as a ``Path``.

    Raises:
        ValueError: ``arch`` is not one of :data:`ARCHITECTURES`.
    """
    import torch
    import transformers

    tokenizer = tokenizer or char_tokenizer()
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    cfg = _hf_config(arch, len(tokenizer), n_layers, d_model, n_heads, n_ctx, ids)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    # Random init gives near-uniform logits; widen them so predictions differ across layers.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
