"""Attribution patching against exact patching, and direct logit attribution's rows of the grid."""

import pytest
import torch

import lens_digits as ld
from lens_digits.methods import ActivationPatching, AttributionPatching, OperandAttributionPatching, OperandPatching
from lens_digits.methods.interventions.dla import Rivals, direct_contributions
from lens_digits.problems.tasks import TaskConfig, generate_problems
from lens_digits.residuals.collect import collect_residuals

pytest.importorskip("transformer_lens.tools.analysis", reason="attribution and dla wrap tools.analysis (TransformerLens >= 3.9)")


def no_norm_model(char_tok):
    """A bridge with no normalisation anywhere: from the final residual to the logits is the unembedding alone (linear)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(n_layers=2, d_model=32, d_head=8, n_heads=4, n_ctx=64, d_vocab=len(char_tok), act_fn="gelu", seed=1)
    cfg.normalization_type = None
    return TransformerBridge.boot_native(cfg, tokenizer=char_tok).eval()


@pytest.fixture(scope="module")
def test_set(native_model):
    problems = generate_problems(TaskConfig(scales=[1, 2], n_per_scale=12, seed=4, n_train=0, n_val=0))
    return collect_residuals(native_model, problems, teacher_forcing=False)


def test_without_a_nonlinearity_after_the_patched_point_the_estimate_is_exact(char_tok):
    model = no_norm_model(char_tok)
    problems = generate_problems(TaskConfig(scales=[1, 2], n_per_scale=10, seed=0, n_train=0, n_val=0))
    data = collect_residuals(model, problems, teacher_forcing=False)
    scores = AttributionPatching(seed=0).score(ld.ModelAdapter.wrap(model), data, "first")
    est, exact = scores.metrics["estimate"][scores.applies], scores.metrics["exact"][scores.applies]
    assert exact[:, -1].abs().min() > 1e-3  # the final column's patch does something
    torch.testing.assert_close(est[:, -1], exact[:, -1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(est[:, 1], exact[:, 1], rtol=1e-4, atol=1e-4)  # through a block it is only an estimate


def test_the_exact_effect_at_the_final_column_is_the_sources_own_difference(native_model, test_set):
    adapter = ld.ModelAdapter.wrap(native_model)
    method = AttributionPatching(seed=0)
    scores = method.score(adapter, test_set, "first")
    source = method.sources(test_set, method.positions(adapter, test_set))
    for i in [0, 3, 7]:
        s, t = test_set.encoded[source[i]], test_set.encoded[i]
        with torch.inference_mode():
            own_s = native_model(torch.tensor([list(s.prompt_ids)]))[0, -1].float()
            own_t = native_model(torch.tensor([list(t.prompt_ids)]))[0, -1].float()
        gs, gt = s.answer_ids[0], t.answer_ids[0]
        want = (own_s[gs] - own_s[gt]) - (own_t[gs] - own_t[gt])
        assert float(scores.metrics["exact"][i, -1]) == pytest.approx(float(want), rel=1e-4, abs=1e-5)
    assert float(scores.metrics["exact"][scores.applies][:, 0].abs().max()) < 1e-5  # column 0 at "=": the same token's embedding


@pytest.mark.parametrize(("estimated", "exact"), [(AttributionPatching, ActivationPatching), (OperandAttributionPatching, OperandPatching)])
def test_pairs_are_those_of_exact_patching(native_model, test_set, estimated, exact):
    adapter = ld.ModelAdapter.wrap(native_model)
    a, b = estimated(seed=5, pairs=6), exact(seed=5, pairs=6)
    where = a.positions(adapter, test_set)
    assert where == b.positions(adapter, test_set) and a.sources(test_set, where) == b.sources(test_set, where)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["arith-llama", "arith-llama-28"])
def test_correlation_with_exact_patching_on_the_builtin_models_is_reported(name):
    model = ld.load_builtin_model(name, device="cpu")
    grid = ld.run_sweep(model, scales=[1, 2], n_per_scale=12, methods=["attribution"], pairs=8, target="first", n_boot=10)
    info = grid.info["methods"]["attribution"]
    rho = info["spearman"]
    print(f"{name}: Spearman of attribution patching against exact patching, by scale: {rho}")
    assert set(rho) == {"1", "2"} and all(-1 <= r <= 1 for r in rho.values())
    assert info["passes_per_pair"]["backward"] == 1 and info["passes_per_pair"]["exact forward"] == model.cfg.n_layers + 2
    cells = grid.to_dataframe(breakdown=False)
    assert set(cells["spearman"].round(6)) == {round(r, 6) for r in rho.values()}


def test_dla_rows_add_up_to_the_logit_difference_on_the_grid(native_model):
    grid = ld.run_sweep(native_model, scales=[1, 2], n_per_scale=10, methods=["dla"], target="both", n_boot=10)
    df = grid.to_dataframe()
    main = df[(df.component == "all") & (df.place == "all") & (df.carries == "all")]
    for (target, scale), cell in main.groupby(["target", "scale"]):
        total = cell["contribution"].sum() + cell["bias"].iloc[0]
        assert total == pytest.approx(cell["logit_diff"].iloc[0], rel=1e-4, abs=1e-4), (target, scale)
    parts = df[(df.component != "all") & (df.place == "all") & (df.carries == "all")]
    zero = parts[((parts.component == "embed") & (parts.layer > 0)) | ((parts.component != "embed") & (parts.layer == 0))]
    assert (zero["contribution"] == 0).all() and len(zero) > 0  # a component writes at its own column only
    assert set(df.loc[(df.target == "answer"), "place"]) >= {"all", "units", "tens"}
    fig = grid.figure("contribution", target="first", component="mlp")  # signed: a scale symmetric about zero
    scale = fig.layout.coloraxis
    assert scale.cmax > 0 and scale.cmin == -scale.cmax and "Contribution" in fig.layout.title.text
    assert "Share Positive" in grid.figure(target="first").layout.title.text  # what its accuracy means


def test_dla_adds_up_on_a_hooked_transformer_too(hooked_model):
    adapter = ld.ModelAdapter.wrap(hooked_model)
    data = collect_residuals(hooked_model, generate_problems(TaskConfig(scales=[2], n_per_scale=4, seed=1, n_train=0, n_val=0)))
    rivals = Rivals(hooked_model.tokenizer, adapter.d_vocab)
    e = data.encoded[0]
    tokens = torch.tensor([list(e.prompt_ids) + list(e.answer_ids[:-1])])
    pos = torch.arange(len(e.answer_ids))[None] + len(e.prompt_ids) - 1
    gold = torch.tensor([list(e.answer_ids)])
    contribution, _, bias, _ = direct_contributions(adapter, tokens, pos, gold, rivals)
    with torch.inference_mode():
        logits = hooked_model(tokens)[0, pos[0]].double()
    want = torch.stack([logits[j, g] - logits[j, rivals.of(g)].mean() for j, g in enumerate(gold[0].tolist())])
    torch.testing.assert_close(contribution.double().sum(0)[0] + bias.double()[0], want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
