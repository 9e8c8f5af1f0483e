"""The logit lens against the model's own forward pass and against plain Hugging Face."""

import pytest
import torch
from conftest import problems_for
from reference import greedy, hf_reference_top1, own_prediction

import lens_digits as ld
from lens_digits.decoders import LogitLens
from lens_digits.residuals import collect_residuals


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


def test_norm_none_reads_the_unembedding_alone_but_the_last_column_is_the_models(llama_model):
    rs = collect_residuals(llama_model, problems_for(scales=(2,), n=10))
    plain = LogitLens.from_model(llama_model, norm="none")
    top1, _, _ = plain.decode(rs)
    with torch.inference_mode():
        for layer in range(llama_model.cfg.n_layers):
            want = llama_model.unembed(rs.resid[:, layer, :1].to(torch.float32)).argmax(-1)[:, 0]
            assert torch.equal(top1[:, layer, 0], want)
    normed, _, _ = LogitLens.from_model(llama_model).decode(rs)
    assert torch.equal(top1[:, -1], normed[:, -1])
    assert plain.settings()["readout"]["norm"] == "none"
    grid = ld.run_sweep(llama_model, scales=[2], n_per_scale=10, norm="none", target="first")
    assert grid.info["sweep"]["norm"] == "none" and "lens norm none" in grid.figure().layout.title.subtitle.text
