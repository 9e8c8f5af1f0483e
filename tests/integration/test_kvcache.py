"""Greedy decoding with a key-value cache (``lens_digits.model.kvcache``): the same tokens as running the whole sequence every step.

The reference is the model's own forward pass on the whole sequence, its output
logits at the last position (``model(tokens)``), written out here step by step.
"""

import warnings

import pytest
import torch

import lens_digits as ld
from lens_digits.methods.interventions.patching import patched_greedy
from lens_digits.model import kvcache
from lens_digits.model.adapter import ModelAdapter
from lens_digits.model.kvcache import greedy_tokens


def own_greedy(model, tokens, n, hooks=()):
    """``n`` greedy tokens from the model's own logits on the whole sequence at every step (hooks held)."""
    start = tokens.shape[1]
    with torch.inference_mode():
        for _ in range(n):
            logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks)) if hooks else model(tokens)
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens[:, start:]


def prompts(adapter, rows=12, length=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, adapter.d_vocab, (rows, length), generator=g)


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    out = {}
    for arch in ld.testing.ARCHITECTURES:
        folder = ld.testing.save_checkpoint(tmp_path_factory.mktemp(arch), arch)
        out[arch] = ld.load_model(folder, device="cpu", progress=False)
    return out


@pytest.mark.parametrize("arch", ld.testing.ARCHITECTURES)
def test_cached_greedy_equals_the_whole_sequence_every_step(family_models, arch):
    model = family_models[arch]
    adapter = ModelAdapter.wrap(model)
    tokens = prompts(adapter)
    got = greedy_tokens(adapter, tokens, 6)
    assert adapter._kv_cache_ok is True  # the cache was used, not the fallback
    assert torch.equal(got, own_greedy(model, tokens, 6))
    assert kvcache.cache_agrees(adapter, tokens, 6) <= 0.25


@pytest.mark.parametrize("which", ["builtin", "hooked_model"])
def test_builtin_and_hooked_models(which, request):
    model = request.getfixturevalue(which)
    adapter = ModelAdapter.wrap(model)
    tokens = prompts(adapter, length=7)
    assert torch.equal(greedy_tokens(adapter, tokens, 5), own_greedy(model, tokens, 5))
    assert adapter._kv_cache_ok is True


def test_a_model_without_a_cache_recomputes(native_model):
    adapter = ModelAdapter.wrap(native_model)
    tokens = prompts(adapter)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: there is simply no cache
        got = greedy_tokens(adapter, tokens, 4)
    assert adapter._kv_cache_ok is False
    assert torch.equal(got, own_greedy(native_model, tokens, 4))


def _skewed(adapter, monkeypatch, change):
    """Make every cached pass's logits ``change(logits)``; passes without a cache are left alone."""
    real = ModelAdapter.last_logits

    def last_logits(self, tokens, hooks=(), **forward):
        logits = real(self, tokens, hooks, **forward)
        return change(logits) if forward else logits

    monkeypatch.setattr(ModelAdapter, "last_logits", last_logits)


def test_near_ties_are_decided_by_the_whole_sequence(family_models, monkeypatch):
    model = family_models["llama"]
    adapter = ModelAdapter.wrap(model)
    tokens = prompts(adapter)
    want = own_greedy(model, tokens, 5)
    greedy_tokens(adapter, tokens, 5)  # the cache is checked and trusted first
    assert adapter._kv_cache_ok is True

    def tie(logits):  # a wrong token a hair above the right one: inside the tolerance, so a possible tie
        logits = logits.clone()
        top = logits.argmax(-1)
        wrong = (top + 1) % logits.shape[-1]
        rows = torch.arange(len(top))
        logits[rows, wrong] = logits[rows, top] + 0.5 * kvcache.tolerance(adapter, logits)
        return logits

    _skewed(adapter, monkeypatch, tie)
    assert torch.equal(greedy_tokens(adapter, tokens, 5), want)


def test_a_cache_that_disagrees_is_not_used(family_models, monkeypatch):
    model = family_models["qwen2"]
    adapter = ModelAdapter.wrap(model)
    tokens = prompts(adapter)

    def noisy(logits):  # far outside the tolerance, as a cache the attention layers ignore would be
        return logits + torch.randn_like(logits)

    _skewed(adapter, monkeypatch, noisy)
    with pytest.warns(UserWarning, match="does not agree with recomputing"):
        got = greedy_tokens(adapter, tokens, 4)
    assert adapter._kv_cache_ok is False
    assert torch.equal(got, own_greedy(model, tokens, 4))


def test_patched_greedy_holds_the_patch_with_a_cache(family_models):
    model = family_models["gpt2"]
    adapter = ModelAdapter.wrap(model)
    tokens = prompts(adapter, rows=6)
    layer, at = 1, torch.tensor([[2, 5]] * 6)
    source = torch.randn(6, 2, adapter.d_model) * 4
    got = patched_greedy(adapter, tokens, layer, source, steps=4, positions=at)
    assert adapter._kv_cache_ok is True
    rows = torch.arange(6)[:, None]

    def patch(x, hook):
        x = x.clone()
        x[rows, at] = source
        return x

    assert torch.equal(got, own_greedy(model, tokens, 4, hooks=[(adapter.resid_hook_names[layer], patch)]))
    assert not torch.equal(got, own_greedy(model, tokens, 4))  # the patch changes what the model says
