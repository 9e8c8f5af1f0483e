"""The logit lens against the model's own forward pass and against plain Hugging Face."""

import pytest
import torch
from reference import greedy, hf_reference_top1, own_prediction

import lens_digits as ld
from lens_digits.decoders import LogitLens
from lens_digits.residuals import collect_residuals
from lens_digits.tasks import TaskConfig, generate_problems


def problems_for(scales=(1, 2, 3), n=24, **kw):
    return generate_problems(TaskConfig(scales=scales, n_per_scale=n, seed=1, **kw))


@pytest.mark.parametrize("which", ["native_model", "llama_model", "gpt2_model", "hooked_model"])
def test_last_column_is_the_models_own_prediction(which, request):
    model = request.getfixturevalue(which)
    kw = {"template": "{a} {op} {b} =", "answer_prefix": " "} if which == "gpt2_model" else {}
    rs = collect_residuals(model, problems_for(**kw), batch_size=16)
    lens = LogitLens.from_model(model)
    top1, _, _ = lens.decode(rs)
    own = own_prediction(model, rs)
    mask = rs.target_ids >= 0
    assert torch.equal(top1[:, -1][mask], own[mask])
    # earlier layers are not all the same prediction (the lens reads each layer)
    assert not torch.equal(top1[:, 0][mask], top1[:, -1][mask])
    # both targets' correctness at the last layer follow from the model's own argmax
    gold = rs.target_ids
    first = lens.score(rs, "first").correct[:, -1]
    answer = lens.score(rs, "answer").correct[:, -1]
    assert torch.equal(first, own[:, 0] == gold[:, 0])
    assert torch.equal(answer, ((own == gold) | ~mask).all(-1))


@pytest.mark.parametrize("folder,kw", [("llama_dir", {}), ("gpt2_dir", {"template": "{a}{op}{b}="}), ("llama_chunk_dir", {})])
def test_every_cell_equals_plain_hugging_face(folder, kw, request):
    folder = request.getfixturevalue(folder)
    model = ld.load_model(folder, device="cpu")
    problems = problems_for(scales=(1, 2, 3, 4), n=20, **kw)
    rs = collect_residuals(model, problems, batch_size=7)
    ours, _, _ = LogitLens.from_model(model).decode(rs)
    ref = hf_reference_top1(folder, rs)
    mask = (rs.target_ids >= 0)[:, None, :].expand_as(ours)
    assert torch.equal(ours[mask], ref[mask])
    # and so the grid equals the grid computed from the reference, cell by cell
    grid = ld.run_sweep(model, scales=(1, 2, 3, 4), n_per_scale=20, seed=1, target="answer", **kw)
    test_idx = [i for i, p in enumerate(problems) if p.split == "test"]
    gold = rs.target_ids[test_idx][:, None, :]
    ref_correct = ((ref[test_idx] == gold) | (gold < 0)).all(-1).float()
    scales = torch.tensor([problems[i].scale for i in test_idx])
    df = grid.to_dataframe()
    for _, row in df.iterrows():
        sel = scales == row["scale"]
        assert row["accuracy"] == pytest.approx(ref_correct[sel, int(row["layer"])].mean().item())
        assert row["n"] == int(sel.sum())


@pytest.mark.parametrize("which", ["native_model", "hooked_model"])
def test_matches_transformer_lens_accumulated_resid(which, request):
    """The DESIGN's layer axis: accumulated_resid(apply_ln=True) then unembed gives the same top-1."""
    model = request.getfixturevalue(which)
    rs = collect_residuals(model, problems_for(scales=(2,), n=12), teacher_forcing=False)
    top1, _, _ = LogitLens.from_model(model).decode(rs)
    for i, e in enumerate(rs.encoded):
        _, cache = model.run_with_cache(torch.tensor([list(e.prompt_ids)]))
        acc = cache.accumulated_resid(apply_ln=True)  # (layer+1, 1, T, d)
        ref = model.unembed(acc[:, 0, -1:, :]).argmax(-1)[:, 0]
        assert torch.equal(top1[i, :, 0], ref)


@pytest.mark.parametrize("which", ["llama_model", "native_model"])
def test_answer_at_last_layer_is_greedy_exact_match(which, request):
    model = request.getfixturevalue(which)
    rs = collect_residuals(model, problems_for(scales=(1, 2), n=20))
    correct = LogitLens.from_model(model).score(rs, "answer").correct[:, -1]
    em = torch.tensor([greedy(model, e) == e.answer_ids for e in rs.encoded])
    assert torch.equal(correct, em)


def test_batched_equals_unbatched(llama_model):
    problems = problems_for(scales=(1, 2, 3), n=15, few_shot=2)
    one = collect_residuals(llama_model, problems, batch_size=1)
    many = collect_residuals(llama_model, problems, batch_size=64)
    torch.testing.assert_close(one.resid, many.resid, rtol=1e-5, atol=1e-5)
    lens = LogitLens.from_model(llama_model)
    assert torch.equal(lens.decode(one)[0], lens.decode(many)[0])


def test_stored_residuals_have_only_answer_positions(llama_model):
    problems = problems_for(scales=(1, 3), n=10, few_shot=3)
    rs = collect_residuals(llama_model, problems)
    n_answer = [len(e.answer_ids) for e in rs.encoded]
    assert rs.resid.shape == (len(problems), llama_model.cfg.n_layers + 1, max(n_answer), llama_model.cfg.d_model)
    assert rs.resid.dtype == torch.float32
    assert (rs.answer_mask.sum(1) == torch.tensor(n_answer)).all()
    assert (rs.resid[~rs.answer_mask.unsqueeze(1).expand(-1, rs.n_columns, -1)] == 0).all()
    first_only = collect_residuals(llama_model, problems, teacher_forcing=False)
    assert first_only.resid.shape[2] == 1
    torch.testing.assert_close(first_only.resid[:, :, 0], rs.resid[:, :, 0], rtol=1e-5, atol=1e-5)


def test_gold_rank_and_prob_are_consistent(llama_model):
    rs = collect_residuals(llama_model, problems_for(scales=(2,), n=20))
    scores = LogitLens.from_model(llama_model).score(rs, "first")
    rank, prob = scores.metrics["gold_rank"], scores.metrics["gold_prob"]
    assert torch.equal(scores.correct, rank == 0)
    assert ((prob > 0) & (prob <= 1)).all()


def test_context_too_long_is_a_clear_error(char_tok):
    model = ld.build_model(tokenizer=char_tok, n_layers=1, n_ctx=12)
    with pytest.raises(ld.ContextLengthError, match="longer than the model's context of 12"):
        ld.run_sweep(model, scales=[3], n_per_scale=10, few_shot=2)


def test_same_seed_same_grid(llama_model):
    a = ld.run_sweep(llama_model, scales=[1, 2], n_per_scale=30, seed=5, target="both").to_dataframe()
    b = ld.run_sweep(llama_model, scales=[1, 2], n_per_scale=30, seed=5, target="both").to_dataframe()
    assert a.equals(b)


def test_model_target_reads_the_models_own_greedy_answer(llama_model):
    grid = ld.run_sweep(llama_model, scales=[1, 2], n_per_scale=30, target="all", seed=3)
    df = grid.main()
    model_rows = df[df["target"] == "model"]
    # at the last layer the lens agrees with what the model says, by construction of greedy decoding
    last = model_rows[model_rows["layer"] == model_rows["layer"].max()]
    assert (last["accuracy"] == 1.0).all()
    assert {p.model_output is not None for p in grid.problems} == {True}
    for p in grid.problems:
        assert p.model_correct == (p.model_output == p.answer)


def test_greedy_answers_match_step_by_step_decoding(llama_model):
    from lens_digits.adapter import ModelAdapter
    from lens_digits.generate import greedy_answers
    from lens_digits.targets import encode_for_model

    problems = problems_for(scales=(1, 2), n=10)
    encoded = encode_for_model(ModelAdapter.wrap(llama_model), problems)
    outputs = greedy_answers(llama_model, [e.prompt_ids for e in encoded], [len(e.answer_ids) + 2 for e in encoded], batch_size=4)
    for e, o in zip(encoded, outputs, strict=True):
        assert greedy(llama_model, e)[: len(o.token_ids)] == o.token_ids[: len(e.answer_ids)]
        assert len(o.token_ids) >= 1


def test_subset_solved_scores_only_solved_problems(tmp_path):
    from lens_digits.testing import char_tokenizer

    model = ld.build_model(tokenizer=char_tokenizer(), n_layers=1)
    grid = ld.run_sweep(model, scales=[1], n_per_scale=40, target="answer", subset="unsolved")
    unsolved = [p for p in grid.problems if p.split == "test" and not p.model_correct]
    assert grid.to_dataframe()["n"].iloc[0] == len(unsolved)
    with pytest.raises(ld.LensDigitsError, match="no test problems left"):
        ld.run_sweep(model, scales=[1], n_per_scale=40, target="answer", subset="solved")


def test_prepend_bos_override(llama_model):
    problems = problems_for(scales=(1,), n=5)
    with_bos = collect_residuals(llama_model, problems, prepend_bos=True)
    without = collect_residuals(llama_model, problems, prepend_bos=False)
    bos = llama_model.tokenizer.bos_token_id
    assert all(e.prompt_ids[0] == bos for e in with_bos.encoded)
    assert all(e.prompt_ids[0] != bos for e in without.encoded)
    assert not torch.allclose(with_bos.resid[:, 1:], without.resid[:, 1:])
