"""Offline test helpers: random checkpoints that plain transformers loads, and the tiny model."""

import pytest
import transformers

from lens_digits.testing import ARCHITECTURES, char_tokenizer, save_checkpoint, tiny_model


def test_saved_checkpoint_loads_with_plain_transformers(llama_dir, char_tok):
    config = transformers.AutoConfig.from_pretrained(llama_dir)
    assert config.model_type == "llama" and config.num_hidden_layers == 3 and config.hidden_size == 32
    assert config.vocab_size == len(char_tok) and config.bos_token_id == char_tok.bos_token_id
    tok = transformers.AutoTokenizer.from_pretrained(llama_dir)
    assert tok("12+3=", add_special_tokens=False)["input_ids"] == char_tok("12+3=", add_special_tokens=False)["input_ids"]


def test_unknown_architecture_is_refused_naming_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown arch 'bert'.*llama"):
        save_checkpoint(tmp_path / "x", "bert", char_tokenizer())
    assert not (tmp_path / "x").exists()
    assert "gemma2" in ARCHITECTURES


def test_tiny_model_has_two_layers_and_the_char_tokenizer():
    model = tiny_model()
    assert model.cfg.n_layers == 2 and model.cfg.d_vocab == len(char_tokenizer())
    assert model.tokenizer("12+3=", add_special_tokens=False)["input_ids"] == [5, 6, 67, 7, 70]
