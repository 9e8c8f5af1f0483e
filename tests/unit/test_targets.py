"""Encoding problems: answer tokens per tokenizer family, boundary merges, BOS and chat templates."""

import pytest
import torch
from conftest import problems_for

import lens_digits as ld
from lens_digits.problems.targets import encode_problems
from lens_digits.residuals.collect import collect_residuals


def strs(tok, ids):
    return [tok.decode([i]) for i in ids]


def test_digit_split_tokenizer_one_token_per_digit(char_tok):
    (e,) = encode_problems(char_tok, ["123+456="], ["579"], bos_token_id=char_tok.bos_token_id)
    assert strs(char_tok, e.answer_ids) == ["5", "7", "9"]
    assert e.prompt_ids[0] == char_tok.bos_token_id
    assert strs(char_tok, e.prompt_ids[1:]) == list("123+456=")


def test_chunk_tokenizer_three_digit_chunks(chunk_tok):
    (e,) = encode_problems(chunk_tok, ["4567+5678="], ["10245"])
    assert strs(chunk_tok, e.answer_ids) == ["102", "45"]
    assert strs(chunk_tok, e.prompt_ids) == ["456", "7", "+", "567", "8", "="]


def test_bpe_leading_space_glued_to_answer(bpe_tok):
    # the space belongs to the answer's first token, as in GPT-2
    (e,) = encode_problems(bpe_tok, ["12 + 34 ="], [" 46"])
    assert strs(bpe_tok, e.answer_ids) == [" 46"]
    assert bpe_tok.decode(list(e.prompt_ids)) == "12 + 34 ="
    # the answer ids are exactly the suffix of the whole string's tokens
    whole = bpe_tok("12 + 34 = 46", add_special_tokens=False)["input_ids"]
    assert list(e.prompt_ids + e.answer_ids) == whole


def test_bpe_multi_digit_answer_tokens_cover_answer(bpe_tok):
    prompts = [f"{a}+{b}=" for a, b in [(123, 456), (999, 1), (7, 8)]]
    answers = [str(a + b) for a, b in [(123, 456), (999, 1), (7, 8)]]
    for e, answer in zip(encode_problems(bpe_tok, prompts, answers), answers, strict=True):
        assert "".join(strs(bpe_tok, e.answer_ids)) == answer


def test_boundary_merge_raises_naming_tokens(bpe_tok):
    with pytest.raises(ld.BoundaryMergeError, match=r"ends with tokens .*' '.*answer prefix"):
        encode_problems(bpe_tok, ["12 + 34 = "], ["46"])


def test_sweep_boundary_merge_names_template(gpt2_model):
    with pytest.raises(ld.BoundaryMergeError, match=r"template '\{a\} \{op\} \{b\} = '"):
        ld.run_sweep(gpt2_model, scales=[2], n_per_scale=10, template="spaced")


def test_gpt2_spaced_template_with_answer_prefix_works(gpt2_model, bpe_tok):
    grid = ld.run_sweep(gpt2_model, scales=[2], n_per_scale=20, template="{a} {op} {b} =", answer_prefix=" ", target="first")
    assert grid.problems[0].prompt.endswith("=") and grid.problems[0].answer_prefix == " "
    assert (grid.to_dataframe()["n"] > 0).all()


def test_chat_template_wraps_prompt_without_extra_bos(llama_dir):
    from lens_digits.model.adapter import ModelAdapter
    from lens_digits.problems.targets import encode_for_model
    from lens_digits.problems.tasks import TaskConfig, generate_problems

    model = ld.load_model(llama_dir, device="cpu", progress=False)
    model.tokenizer.chat_template = (
        "{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}Answer:{% endif %}"
    )
    problems = generate_problems(TaskConfig(scales=[2], n_per_scale=5))
    for p, e in zip(problems, encode_for_model(ModelAdapter.wrap(model), problems, chat=True), strict=True):
        text = model.tokenizer.decode(list(e.prompt_ids))
        assert text == f"User: {p.prompt}\nAnswer:"
        assert model.tokenizer.decode(list(e.answer_ids)) == p.answer
    grid = ld.run_sweep(model, scales=[2], n_per_scale=10, chat=True, target="first")
    assert grid.info["chat"] is True
    model.tokenizer.chat_template = None
    with pytest.raises(ld.LensDigitsError, match="chat template"):
        encode_for_model(ModelAdapter.wrap(model), problems, chat=True)


def test_first_token_digits_per_tokenizer(char_tok, chunk_tok, bpe_tok):
    assert encode_problems(char_tok, ["999+1="], ["1000"])[0].first_token_digits == 1
    assert encode_problems(chunk_tok, ["9999+1="], ["10000"])[0].first_token_digits == 3
    (e,) = encode_problems(bpe_tok, ["12 + 34 ="], [" 46"])
    assert e.first_token_digits == 2


def test_prepend_bos_override(llama_model):
    problems = problems_for(scales=(1,), n=5)
    with_bos = collect_residuals(llama_model, problems, prepend_bos=True)
    without = collect_residuals(llama_model, problems, prepend_bos=False)
    bos = llama_model.tokenizer.bos_token_id
    assert all(e.prompt_ids[0] == bos for e in with_bos.encoded)
    assert all(e.prompt_ids[0] != bos for e in without.encoded)
    assert not torch.allclose(with_bos.resid[:, 1:], without.resid[:, 1:])
