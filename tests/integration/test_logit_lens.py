"""The logit lens against the model's own forward pass and against plain Hugging Face."""

import pytest
import torch
from conftest import problems_for
from reference import greedy, hf_reference_top1, own_prediction

import lens_digits as ld
from lens_digits.methods import LogitLens
from lens_digits.residuals.collect import collect_residuals


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
    df = grid.to_dataframe(breakdown=False)
    numbers = reference_numbers(folder, ref[test_idx], rs.target_ids[test_idx])
    answers = torch.tensor([float(problems[i].answer) for i in test_idx])
    error = (numbers - answers[:, None]).abs()  # NaN where the read is not a number
    for _, row in df.iterrows():
        sel = scales == row["scale"]
        layer = int(row["layer"])
        assert row["accuracy"] == pytest.approx(ref_correct[sel, layer].mean().item())
        assert row["n"] == int(sel.sum())
        # numeric scores of the number each layer reads, from the reference's top-1 and the tokenizer alone
        assert row["numeric"] == pytest.approx((~error[sel, layer].isnan()).float().mean().item(), abs=1e-6)
        assert row["within_1"] == pytest.approx((error[sel, layer] <= 1).float().mean().item(), abs=1e-6)
        assert row["within_10"] == pytest.approx((error[sel, layer] <= 10).float().mean().item(), abs=1e-6)
        if (~error[sel, layer].isnan()).any():
            assert row["abs_error"] == pytest.approx(error[sel, layer].nanmean().item(), rel=1e-5)
    # each digit place (one digit per token) or answer token (chunks, BPE) is read as the reference reads it
    positions = reference_positions(folder, rs.target_ids[test_idx])
    rows = grid.to_dataframe()
    rows = rows[rows["place"] != "all"]
    for column in {"carries", "carry_in"} & set(rows.columns):  # carry-in rows exist under digit places only
        rows = rows[rows[column] == "all"]
    assert set(rows["place"]) == set(positions), "one row label per place or answer token"
    gold_ids = rs.target_ids[test_idx]
    for _, row in rows.iterrows():
        pos = positions[row["place"]]  # (problem,) position of the label's token, -1 where the answer has none
        sel = (scales == row["scale"]) & (pos >= 0)
        p = pos[sel]
        hit = ref[test_idx][sel, int(row["layer"]), :].gather(1, p[:, None])[:, 0] == gold_ids[sel].gather(1, p[:, None])[:, 0]
        assert row["n"] == int(sel.sum()) and row["accuracy"] == pytest.approx(hit.float().mean().item())


def reference_numbers(folder, top1, gold_ids):
    """The integer each layer's top-1 tokens spell (NaN if none), joined with the Hugging Face tokenizer."""
    import re

    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    out = torch.full(top1.shape[:2], float("nan"), dtype=torch.float64)
    for i in range(top1.shape[0]):
        k = int((gold_ids[i] >= 0).sum())
        for layer in range(top1.shape[1]):
            text = tok.decode(top1[i, layer, :k].tolist()).strip()
            if re.fullmatch(r"-?\d+", text):
                out[i, layer] = float(text)
    return out


def reference_positions(folder, gold_ids):
    """Row label -> answer position per problem: digit places when every answer token holds at most one digit, else tokens."""
    import transformers

    from lens_digits.problems.digits import place_name

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    digits = [[sum(c.isdigit() for c in tok.decode([t])) for t in row if t >= 0] for row in gold_ids.tolist()]
    per_digit = all(d <= 1 for row in digits for d in row)
    out: dict[str, torch.Tensor] = {}
    for i, row in enumerate(digits):
        if per_digit:
            digit_positions = [j for j, d in enumerate(row) if d]
            labels = {place_name(len(digit_positions) - 1 - k): j for k, j in enumerate(digit_positions)}
        else:
            labels = {f"token {j + 1}": j for j in range(len(row))}
        for label, j in labels.items():
            out.setdefault(label, torch.full((len(digits),), -1, dtype=torch.long))[i] = j
    return out


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
