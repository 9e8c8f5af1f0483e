"""Checkpoint folders checked before their weights load: an architecture TransformerLens lacks is named as such."""

import pytest

import lens_digits as ld


def test_an_architecture_transformer_lens_lacks_says_so(tmp_path):
    import transformers

    try:
        from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    except ImportError:
        SUPPORTED_ARCHITECTURES = {}
    if "BioGptForCausalLM" in SUPPORTED_ARCHITECTURES:
        pytest.skip("this TransformerLens supports BioGPT")
    tok = ld.testing.char_tokenizer()
    cfg = transformers.BioGptConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "biogpt")
    tok.save_pretrained(tmp_path / "biogpt")
    with pytest.raises(ld.ModelLoadError, match="does not support the architecture") as e:
        ld.load_model(tmp_path / "biogpt", device="cpu")
    assert "network" not in str(e.value) and "hub" not in str(e.value)
