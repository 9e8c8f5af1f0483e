"""Shared fixtures and helpers: tokenizers, tiny models, problems and synthetic residuals built in-process, nothing downloaded."""

import os
import warnings
from pathlib import Path

import pytest
import torch

import lens_digits as ld
from lens_digits.model.loading import hooked_transformer_class, transformer_lens_version
from lens_digits.problems.digits import digit_labels
from lens_digits.problems.targets import EncodedProblem
from lens_digits.problems.tasks import Problem, TaskConfig, generate_problems
from lens_digits.residuals.collect import ResidualSet
from lens_digits.testing import bpe_tokenizer, char_tokenizer, chunk_tokenizer, save_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)

REPO = Path(__file__).resolve().parents[1]
"""The repository's root (tests live in tests/unit and tests/integration)."""

HAS_HOOKED = hooked_transformer_class() is not None

GPU_CPU_SPLIT = {
    "model.embed_tokens": 0,
    "model.layers.0": 0,
    "model.layers.1": "cpu",
    "model.layers.2": "cpu",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}
"""A ``device_map`` for the test checkpoints: embedding and first block on GPU 0, the rest on the CPU."""
needs_hooked = pytest.mark.skipif(
    not HAS_HOOKED, reason=f"TransformerLens {transformer_lens_version()} has no HookedTransformer (removed in 4.0)"
)


def build_cfg(**overrides):
    """Settings of the small random models used across the tests."""
    cfg = dict(n_layers=3, d_model=32, n_heads=4, n_ctx=64, seed=0)
    cfg.update(overrides)
    return cfg


def problems_for(scales=(1, 2, 3), n=24, **kw):
    return generate_problems(TaskConfig(scales=scales, n_per_scale=n, seed=1, **kw))


def synthetic_set(answers, splits, signal_layers, *, n_layers=5, d_model=24, strength=1.5, seed=0, scales=None, answer_tokens=None):
    """Residuals where each answer digit is written linearly (one random direction per place and digit) at ``signal_layers``."""
    gen = torch.Generator().manual_seed(seed)
    n = len(answers)
    places = max(len(a.lstrip("-")) for a in answers)
    labels = digit_labels(answers, places)
    codes = torch.randn(places, 10, d_model, generator=gen)
    signal = sum(codes[p][labels[:, p]] for p in range(places))  # (n, d)
    resid = torch.randn(n, n_layers, 1, d_model, generator=gen)
    for layer in signal_layers:
        resid[:, layer, 0] += strength * signal
    resid[:, :, 0, 0] += 3.0  # an offset, so standardisation matters
    scales = scales or [3] * n
    problems = [
        Problem(s, "add", i, i * 7919 % 1000, f"{i}+{i * 7919 % 1000}=", a, sp)
        for i, (a, sp, s) in enumerate(zip(answers, splits, scales, strict=True))
    ]
    tokens = answer_tokens or [len(a) for a in answers]
    encoded = [EncodedProblem((1, 2, 3), tuple(range(4, 4 + k))) for k in tokens]
    return ResidualSet(resid, torch.zeros(n, 1, dtype=torch.long), problems, encoded, {})


def splits(n_train, n_val, n_test):
    return ["train"] * n_train + ["val"] * n_val + ["test"] * n_test


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


@pytest.fixture(scope="module")
def builtin():
    from lens_digits.builtin import load_builtin_model

    return load_builtin_model("arith-llama", device="cpu")  # the small shipped model: fast; the deep one has tests of its own


@pytest.fixture(scope="module")
def card():
    from lens_digits.builtin import builtin_card

    return builtin_card("arith-llama")


@pytest.fixture(scope="module")
def grid(native_model):
    return ld.run_sweep(native_model, scales=[1, 2, 3], n_per_scale=40, target="both", seed=2)


@pytest.fixture(scope="module")
def saved(grid, tmp_path_factory):
    return grid.save(tmp_path_factory.mktemp("saved") / "run")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
