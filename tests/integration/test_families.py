"""Every architecture family, with a digit-per-token and a BPE tokenizer, against plain Hugging Face.

For each family and tokenizer, targets first, answer and model at scales 1-4:
every cell's top-1 (so its correctness), gold rank and gold log-probability
equal a computation with transformers alone (output_hidden_states, the model's
own final norm, head and output transforms), and the last column's
log-probabilities equal the model's own log_softmax.
"""

import pytest
import torch
from reference import hf_lens_reference

import lens_digits as ld
from lens_digits.methods import LogitLens
from lens_digits.methods.interventions.dla import Rivals, direct_contributions
from lens_digits.model.adapter import ModelAdapter
from lens_digits.model.greedy import greedy_answers
from lens_digits.model.loading import analysis_tools, transformer_lens_version
from lens_digits.problems.targets import EncodedProblem
from lens_digits.problems.tasks import TaskConfig, generate_problems
from lens_digits.residuals.collect import collect_residuals
from lens_digits.testing import bpe_tokenizer, char_tokenizer, chunk_tokenizer, save_checkpoint

try:
    HAS_TOOLS = analysis_tools("dla") is not None
except ld.TransformerLensVersionError:
    HAS_TOOLS = False

ARCHS = {"gpt2": "gpt2", "pythia": "gpt_neox", "llama2": "llama", "qwen2": "qwen2", "mistral": "mistral", "gemma2": "gemma2"}
TOKENIZERS = {
    # name: (builder, task settings that put the prompt's end where a token ends)
    "digits": (char_tokenizer, {"template": "compact"}),
    "bpe": (bpe_tokenizer, {"template": "{a} {op} {b} =", "answer_prefix": " "}),
}
CASES = [(family, tok) for family in ARCHS for tok in TOKENIZERS] + [("llama3", "chunks")]


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{t}" for f, t in CASES])
def family(request, tmp_path_factory):
    name, tok_name = request.param
    arch = ARCHS.get(name, "llama")
    make_tok, settings = (chunk_tokenizer, {}) if tok_name == "chunks" else TOKENIZERS[tok_name]
    folder = save_checkpoint(tmp_path_factory.mktemp(name) / arch, arch, make_tok(), n_layers=2, d_model=32)
    return f"{name}-{tok_name}", folder, ld.load_model(folder, device="cpu", progress=False), settings


def residual_sets(model, settings):
    problems = generate_problems(TaskConfig(scales=[1, 2, 3, 4], n_per_scale=10, seed=0, **settings))
    answer = collect_residuals(model, problems, batch_size=8)
    first = collect_residuals(model, problems, batch_size=8, teacher_forcing=False)
    outputs = greedy_answers(model, [e.prompt_ids for e in answer.encoded], [len(e.answer_ids) + 2 for e in answer.encoded], batch_size=8)
    own = [EncodedProblem(e.prompt_ids, o.token_ids) for e, o in zip(answer.encoded, outputs, strict=True)]
    model_target = collect_residuals(model, problems, encoded=own, batch_size=8)
    return {"first": first, "answer": answer, "model": model_target}


def test_every_cell_equals_plain_hugging_face(family):
    name, folder, model, settings = family
    lens = LogitLens.from_model(model)
    for target, rs in residual_sets(model, settings).items():
        top1, rank, logp = lens.decode(rs)
        ref_top1, ref_rank, ref_logp = hf_lens_reference(folder, rs)
        mask = (rs.target_ids >= 0)[:, None, :].expand_as(top1)
        assert torch.equal(top1[mask], ref_top1[mask]), (name, target)
        # Ranks count logits above the gold one: two implementations' float noise may swap a near-tie (a few in 1e4).
        off = (rank[mask] - ref_rank[mask]).abs()
        assert off.max() <= 1 and (off > 0).float().mean() <= 0.005, (name, target, int((off > 0).sum()))
        torch.testing.assert_close(logp[mask], ref_logp[mask], rtol=1e-4, atol=1e-4, msg=f"{name} {target}")
        # the last column is the model's own distribution
        own = []
        with torch.inference_mode():
            for i, e in enumerate(rs.encoded):
                logits = model(torch.tensor([list(e.prompt_ids) + list(e.answer_ids)]))[0].float()
                n_pos = int((rs.target_ids[i] >= 0).sum())
                pos = torch.arange(n_pos) + len(e.prompt_ids) - 1
                own.append(logits[pos].log_softmax(-1).gather(-1, rs.target_ids[i, :n_pos, None])[:, 0])
        torch.testing.assert_close(logp[:, -1][rs.target_ids >= 0], torch.cat(own), rtol=1e-5, atol=1e-5)


def test_sweep_with_every_target_runs_and_scores_the_reference(family):
    name, folder, model, settings = family
    grid = ld.run_sweep(model, scales="1-4", n_per_scale=10, seed=0, target="all", batch_size=8, **settings)
    df = grid.to_dataframe()
    assert set(df["target"]) == {"first", "answer", "model"} and set(df["scale"]) == {1, 2, 3, 4}
    last = df[df["layer"] == model.cfg.n_layers]
    assert (last.loc[last["target"] == "model", "accuracy"] == 1).all(), "the model agrees with itself at the last layer"


def test_first_token_per_family(family):
    name, _, model, settings = family
    problems = [p for p in generate_problems(TaskConfig(scales=[4], n_per_scale=30, seed=0, **settings)) if len(p.answer) == 5]
    rs = collect_residuals(model, problems[:1], teacher_forcing=False)
    first = model.tokenizer.decode([int(rs.target_ids[0, 0])])
    answer = problems[0].answer
    if name.endswith("-digits"):
        assert first == answer[0]
    elif name.endswith("-chunks"):
        assert first == answer[:3]
    else:  # BPE: the space the template leaves to the answer, glued to leading digits or (Qwen2's pre-tokenizer) alone
        assert (" " + answer).startswith(first) and first


@pytest.mark.skipif(not HAS_TOOLS, reason=f"dla wraps tools.analysis (TransformerLens >= 3.9); {transformer_lens_version()} has none")
def test_direct_logit_attribution_adds_up_to_the_logit_difference(family):
    name, _, model, settings = family
    adapter = ModelAdapter.wrap(model)
    problems = generate_problems(TaskConfig(scales=[1, 3], n_per_scale=6, seed=0, **settings))
    rs = collect_residuals(model, [p for p in problems if p.split == "test"], batch_size=8)
    rivals = Rivals(model.tokenizer, adapter.d_vocab)
    for e in rs.encoded:
        seq = list(e.prompt_ids) + list(e.answer_ids[:-1])
        pos = torch.arange(len(e.answer_ids))[None] + len(e.prompt_ids) - 1
        gold = torch.tensor([list(e.answer_ids)])
        contribution, where, bias, total = direct_contributions(adapter, torch.tensor([seq]), pos, gold, rivals)
        assert {w[0] for w in where} == {"embed", "attn", "mlp"} and max(w[1] for w in where) == adapter.n_layers
        with torch.inference_mode():  # the model's own logits before any output soft-cap, from its final residual
            _, cache = model.run_with_cache(torch.tensor([seq]))
            logits = model.unembed(model.ln_final(cache[adapter.resid_hook_names[-1]]))[0, pos[0]].double()
        rival = [rivals.of(g) for g in gold[0].tolist()]  # none for a token without digits (Qwen2's lone space): its own logit
        pairs = enumerate(zip(gold[0].tolist(), rival, strict=True))
        want = torch.stack([logits[j, g] - (logits[j, r].mean() if r else 0) for j, (g, r) in pairs])
        got = contribution.double().sum(0)[0] + bias.double()[0]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()), msg=name)
        torch.testing.assert_close(total.double()[0], want, rtol=1e-4, atol=1e-4 * float(want.abs().max()), msg=name)
