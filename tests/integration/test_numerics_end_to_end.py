"""The last column is the model's own prediction end to end: in bfloat16, and on a HookedTransformer with processed weights."""

import pytest
import torch
from conftest import needs_hooked, problems_for
from reference import own_prediction

import lens_digits as ld
from lens_digits.methods import LogitLens
from lens_digits.residuals import collect_residuals


def _last_column_is_own_prediction(model, scales=(1, 2)):
    rs = collect_residuals(model, problems_for(scales=scales, n=12))
    top1, _, _ = LogitLens.from_model(model).decode(rs)
    own = own_prediction(model, rs)
    real = rs.target_ids >= 0
    assert torch.equal(top1[:, -1][real], own[real])  # every answer position, every problem
    return rs, own


def test_bfloat16_last_column_is_the_models_own_prediction_and_greedy_accuracy(llama_dir):
    model = ld.load_model(llama_dir, device="cpu", dtype="bfloat16")
    rs, own = _last_column_is_own_prediction(model)
    grid = ld.run_sweep(model, scales=[1, 2], n_per_scale=12, target="answer", seed=1)
    last = grid.main()
    last = last[(last["method"] == "logit_lens") & (last["layer"] == model.cfg.n_layers)].set_index("scale")["accuracy"]
    # teacher-forced exact match from the model's own bfloat16 forward pass, problem by problem
    problems = ld.generate_problems(ld.TaskConfig(scales=[1, 2], n_per_scale=12, seed=1))
    test = collect_residuals(model, [p for p in problems if p.split == "test"])
    own = own_prediction(model, test)
    right = ((own == test.target_ids) | (test.target_ids < 0)).all(1)
    for scale in (1, 2):
        mine = torch.tensor([p.scale == scale for p in test.problems])
        assert last[scale] == pytest.approx(right[mine].float().mean().item(), abs=1e-6)


@needs_hooked
def test_a_hooked_transformer_with_folded_layer_norm_and_processed_weights(char_tok):
    from conftest import build_cfg

    model = ld.build_model(tokenizer=char_tok, kind="hooked", **build_cfg(normalization_type="LN"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)
    assert model.cfg.normalization_type == "LNPre"  # the norm's weights are folded into the next layer
    _last_column_is_own_prediction(model)
    grid = ld.run_sweep(model, scales=[1, 2], n_per_scale=12, target="answer")
    assert grid.info["model"]["kind"] == "HookedTransformer"
