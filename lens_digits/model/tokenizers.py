"""Word-level tokenizers built in memory with ``tokenizers``: the built-in model's, and the test families'.

:func:`word_tokenizer` makes a transformers tokenizer from a vocabulary and a
rule that splits text into vocabulary entries: one entry per character (the
built-in model, digit-per-token families) or digit chunks (Llama-3-like).
Nothing is downloaded and nothing is written to disk.
"""

from collections.abc import Sequence
from typing import Any

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
"""Padding, BOS, EOS and unknown: ids 0-3 of every vocabulary built here."""


def word_tokenizer(tokens: Sequence[str], *, split: str | None = None, add_bos: bool = False, model_max_length: int | None = None) -> Any:
    """A ``PreTrainedTokenizerFast`` over ``SPECIALS + tokens``.

    Args:
        tokens: The vocabulary after the special tokens, in id order.
        split: A regex whose matches are the tokens (default: every character on its own).
        add_bos: Put ``<s>`` before every text, as Llama's tokenizers do
            (``add_special_tokens=False`` still gives the bare tokens).
        model_max_length: Recorded on the tokenizer.

    Returns:
        The tokenizer, with ``<s>``, ``</s>``, ``<pad>`` and ``<unk>`` as its BOS, EOS, padding and unknown tokens.

    >>> tok = word_tokenizer(list("0123456789+="), add_bos=True)
    >>> tok("12+3=")["input_ids"], tok("12+3=", add_special_tokens=False)["input_ids"]
    ([1, 5, 6, 14, 7, 15], [5, 6, 14, 7, 15])
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(dict.fromkeys([*SPECIALS, *tokens]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(split) if split else "", behavior="isolated")
    tok.decoder = decoders.Fuse()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])])
    extra: dict[str, Any] = {"add_bos_token": True, "add_eos_token": False} if add_bos else {}
    if model_max_length is not None:
        extra["model_max_length"] = model_max_length
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", **extra)
