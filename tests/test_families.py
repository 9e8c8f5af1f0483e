"""Architecture families with tokenizers that behave like theirs, all built offline.

For each: the last logit-lens column is the model's own prediction and every
cell equals a plain Hugging Face computation, under the installed TransformerLens.
"""

import pytest
import torch
from reference import hf_reference_top1, own_prediction

import lens_digits as ld
from lens_digits.decoders import LogitLens
from lens_digits.residuals import collect_residuals
from lens_digits.tasks import TaskConfig, generate_problems
from lens_digits.testing import bpe_tokenizer, char_tokenizer, chunk_tokenizer, save_checkpoint

FAMILIES = {
    # family: (HF architecture, tokenizer builder, task settings)
    "gpt2": ("gpt2", bpe_tokenizer, {"template": "{a} {op} {b} =", "answer_prefix": " "}),
    "pythia": ("gpt_neox", bpe_tokenizer, {"template": "compact"}),
    "llama2": ("llama", char_tokenizer, {}),
    "llama3": ("llama", chunk_tokenizer, {}),
    "qwen2": ("qwen2", char_tokenizer, {"template": "calculate"}),
    "mistral": ("mistral", char_tokenizer, {}),
    "gemma2": ("gemma2", char_tokenizer, {}),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    arch, make_tok, settings = FAMILIES[request.param]
    folder = save_checkpoint(tmp_path_factory.mktemp(request.param) / arch, arch, make_tok(), n_layers=2, d_model=32)
    return request.param, folder, ld.load_model(folder, device="cpu", progress=False), settings


def test_last_column_is_own_prediction_and_cells_equal_hugging_face(family):
    name, folder, model, settings = family
    problems = generate_problems(TaskConfig(scales=[1, 2, 3], n_per_scale=12, seed=0, **settings))
    rs = collect_residuals(model, problems, batch_size=8)
    top1, _, _ = LogitLens.from_model(model).decode(rs)
    mask = rs.target_ids >= 0
    assert torch.equal(top1[:, -1][mask], own_prediction(model, rs)[mask]), name
    ref = hf_reference_top1(folder, rs)
    full = mask[:, None, :].expand_as(top1)
    assert torch.equal(top1[full], ref[full]), name


def test_first_token_per_family(family):
    name, _, model, settings = family
    problems = [p for p in generate_problems(TaskConfig(scales=[4], n_per_scale=30, seed=0, **settings)) if len(p.answer) == 5]
    rs = collect_residuals(model, problems[:1], teacher_forcing=False)
    tok = model.tokenizer
    first = tok.decode([int(rs.target_ids[0, 0])])
    answer = problems[0].answer
    expected = {
        "llama2": answer[0],
        "qwen2": answer[0],
        "mistral": answer[0],
        "gemma2": answer[0],
        "llama3": answer[:3],
    }
    if name in expected:
        assert first == expected[name]
    else:  # BPE: a run of leading digits, with the glued space where the template leaves it to the answer
        assert (settings.get("answer_prefix", "") + answer).startswith(first) and len(first.strip()) >= 1
