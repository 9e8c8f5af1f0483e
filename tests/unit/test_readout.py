"""The model's readout: at the final residual the model's own output; without the norm the unembedding alone; Gemma-2's soft-cap."""

import pytest
import torch

import lens_digits as ld
from lens_digits.errors import LensDigitsError
from lens_digits.model.readout import Readout
from lens_digits.problems.tasks import TaskConfig, generate_problems
from lens_digits.residuals.collect import collect_residuals
from lens_digits.testing import char_tokenizer, save_checkpoint, tiny_model

TOKENS = torch.tensor([[1, 5, 6, 67, 7, 70], [1, 13, 12, 67, 5, 70]])  # <s>12+3= and <s>98+1= in char_tokenizer's ids


def final_residual(model, tokens):
    """The residual after the last block: what the model's own final norm and unembedding read."""
    _, cache = model.run_with_cache(tokens)
    return cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]


@pytest.mark.parametrize("which", ["tiny", "llama_model"])
def test_final_residual_gives_the_models_own_log_probabilities(which, request):
    model = tiny_model() if which == "tiny" else request.getfixturevalue(which)
    with torch.inference_mode():
        own = model(TOKENS).float().log_softmax(-1)
    got = Readout(model)(final_residual(model, TOKENS)).log_softmax(-1)
    assert got.shape == own.shape == (*TOKENS.shape, model.cfg.d_vocab)
    torch.testing.assert_close(got, own, atol=1e-5, rtol=0)


def test_norm_none_is_the_unembedding_alone():
    model = tiny_model()
    resid = final_residual(model, TOKENS)
    readout = Readout(model, norm="none")
    assert readout.steps == ["unembedding"] and readout.describe() == {"norm": "none", "steps": ["unembedding"]}
    with torch.inference_mode():
        unembedded = model.unembed(resid).float()
    torch.testing.assert_close(readout(resid), unembedded, atol=1e-6, rtol=0)
    # and the final norm does change the logits, so the equality above says the norm was left out
    assert not torch.allclose(Readout(model)(resid), unembedded, atol=1e-3)
    with pytest.raises(LensDigitsError, match="unknown norm 'bogus'"):
        Readout(model, norm="bogus")


def test_gemma2_soft_cap_is_applied(tmp_path):
    folder = save_checkpoint(tmp_path / "gemma2", "gemma2", char_tokenizer(), n_layers=2, d_model=32)
    model = ld.load_model(folder, device="cpu", progress=False)
    readout = ld.Readout(model)
    assert any("soft-cap 30" in s for s in readout.steps), readout.steps
    problems = generate_problems(TaskConfig(scales=[1, 2, 3, 4], n_per_scale=10, seed=0))
    rs = collect_residuals(model, problems, batch_size=8, teacher_forcing=False)  # the "first" set of test_families.residual_sets
    capped = readout(rs.resid[:, -1, 0]).log_softmax(-1)
    readout.transform = None  # what the lens read before: the gap is what was missing
    uncapped = readout(rs.resid[:, -1, 0]).log_softmax(-1)
    assert (capped - uncapped).abs().max() > 1e-3
