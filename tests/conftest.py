"""Shared fixtures: tokenizers and tiny models built in-process, nothing downloaded."""

import os
import warnings

import pytest
import torch

import lens_digits as ld
from lens_digits.models import hooked_transformer_class, transformer_lens_version
from lens_digits.testing import bpe_tokenizer, char_tokenizer, chunk_tokenizer, save_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)

HAS_HOOKED = hooked_transformer_class() is not None
needs_hooked = pytest.mark.skipif(
    not HAS_HOOKED, reason=f"TransformerLens {transformer_lens_version()} has no HookedTransformer (removed in 4.0)"
)


def build_cfg(**overrides):
    """Settings of the small random models used across the tests."""
    cfg = dict(n_layers=3, d_model=32, n_heads=4, n_ctx=64, seed=0)
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="session")
def char_tok():
    return char_tokenizer()


@pytest.fixture(scope="session")
def chunk_tok():
    return chunk_tokenizer()


@pytest.fixture(scope="session")
def bpe_tok():
    return bpe_tokenizer()


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, char_tok):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama", "llama", char_tok, n_layers=3)


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, bpe_tok):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "gpt2", "gpt2", bpe_tok, n_layers=3)


@pytest.fixture(scope="session")
def llama_chunk_dir(tmp_path_factory, chunk_tok):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama3ish", "llama", chunk_tok, n_layers=2)


@pytest.fixture(scope="module")
def llama_model(llama_dir):
    return ld.load_model(llama_dir, device="cpu")


@pytest.fixture(scope="module")
def gpt2_model(gpt2_dir):
    return ld.load_model(gpt2_dir, device="cpu")


@pytest.fixture(scope="module")
def native_model(char_tok):
    return ld.build_model(tokenizer=char_tok, kind="bridge", **build_cfg())


@pytest.fixture(scope="module")
def hooked_model(char_tok):
    if not HAS_HOOKED:
        pytest.skip(f"TransformerLens {transformer_lens_version()} has no HookedTransformer (removed in 4.0)")
    return ld.build_model(tokenizer=char_tok, kind="hooked", **build_cfg(normalization_type="LN"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
