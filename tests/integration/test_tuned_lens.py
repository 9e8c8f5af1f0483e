"""The tuned lens: against a plain Hugging Face computation with the same translators, training, files."""

import json

import pytest
import torch
import transformers
from reference import final_norm, hf_output_transform

import lens_digits as ld
from lens_digits.methods import LogitLens, TunedLens
from lens_digits.problems.tasks import TaskConfig, generate_problems
from lens_digits.residuals.collect import collect_residuals
from lens_digits.testing import ARCHITECTURES, char_tokenizer, save_checkpoint


def random_translators(lens, scale=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n, d = lens.adapter.n_layers, lens.adapter.d_model
    lens.W = scale * torch.randn(n, d, d, generator=gen)
    lens.b = scale * torch.randn(n, d, generator=gen)
    lens.trained = True
    return lens


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_translated_logits_equal_plain_hugging_face(arch, tmp_path):
    folder = save_checkpoint(tmp_path / arch, arch, char_tokenizer(), n_layers=2, d_model=32)
    model = ld.load_model(folder, device="cpu", progress=False)
    lens = random_translators(TunedLens.from_model(model))
    problems = generate_problems(TaskConfig(scales=[1, 2], n_per_scale=6, n_train=0, n_val=0))
    rs = collect_residuals(model, problems)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    norm, head, transform = final_norm(hf), hf.get_output_embeddings(), hf_output_transform(hf)
    with torch.no_grad():
        for i, e in enumerate(rs.encoded):
            out = hf(torch.tensor([list(e.prompt_ids) + list(e.answer_ids)]), output_hidden_states=True)
            pos = [len(e.prompt_ids) - 1 + j for j in range(len(e.answer_ids))]
            for layer in range(hf.config.num_hidden_layers + 1):
                if layer < hf.config.num_hidden_layers:  # the translator, then the model's own readout
                    h = out.hidden_states[layer][0, pos]
                    want = transform(head(norm(h + h @ lens.W[layer].T + lens.b[layer]))).log_softmax(-1)
                else:  # no translator on the final residual: the model's own prediction
                    want = out.logits[0, pos].log_softmax(-1)
                got = lens.layer_logits(rs.resid[i, layer, : len(pos)], layer).float().log_softmax(-1)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_an_untrained_lens_is_the_logit_lens(llama_model):
    rs = collect_residuals(llama_model, generate_problems(TaskConfig(scales=[2], n_per_scale=8, n_train=0, n_val=0)))
    lens = random_translators(TunedLens.from_model(llama_model), scale=0.0)
    for a, b in zip(lens.decode(rs), LogitLens.from_model(llama_model).decode(rs), strict=True):
        assert torch.equal(a, b)


def test_training_brings_the_layers_closer_to_the_final_distribution(builtin):
    grid = ld.run_sweep(builtin, scales="1-3", n_per_scale=60, methods=["logit_lens", "tuned_lens"], target="answer")
    info = grid.info["methods"]["tuned_lens"]
    assert info["trained"] and info["mean_kl_last"] < 0.6 * info["mean_kl_first"]
    assert "train problems" in info["trained_on"]
    tuned, logit = grid.pivot("tuned_lens", "answer"), grid.pivot("logit_lens", "answer")
    n_layers = builtin.cfg.n_layers
    assert (tuned[n_layers] == logit[n_layers]).all(), "the final column is the model's own prediction in both"
    assert tuned[n_layers - 1].mean() > logit[n_layers - 1].mean(), "translators read the answer earlier"


def test_save_load_and_the_tuned_lens_library_format(llama_model, tmp_path):
    lens = random_translators(TunedLens.from_model(llama_model), seed=3)
    again = TunedLens.load(lens.save(tmp_path / "ours"), llama_model)
    assert torch.equal(again.W, lens.W) and torch.equal(again.b, lens.b)
    # the tuned-lens library writes config.json + params.pt (a state dict of its translators, h + Linear(h))
    lib = tmp_path / "library"
    lib.mkdir()
    n, d = lens.W.shape[0], lens.W.shape[1]
    state = {f"{i}.{k}": v for i in range(n) for k, v in (("weight", lens.W[i]), ("bias", lens.b[i]))}
    torch.save(state, lib / "params.pt")
    config = {"base_model_name_or_path": "tiny", "d_model": d, "num_hidden_layers": n, "bias": True, "lens_type": "linear_tuned_lens"}
    (lib / "config.json").write_text(json.dumps(config))
    theirs = TunedLens.load(lib, llama_model)
    assert torch.equal(theirs.W, lens.W) and torch.equal(theirs.b, lens.b)
    with pytest.raises(ld.LensDigitsError, match="made for another model"):
        TunedLens.load(lib, ld.testing.tiny_model())
    with pytest.raises(ld.LensDigitsError, match="no tuned lens"):
        TunedLens.load(tmp_path, llama_model)


def test_a_corpus_trains_it_too(llama_model, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{a}+{b}={a + b}" for a in range(20) for b in range(20)) + "\n")
    lens = TunedLens.from_model(llama_model, corpus=str(corpus), steps=20)
    grid = ld.run_sweep(llama_model, scales=[2], n_per_scale=10, n_train=0, n_val=0, methods=[lens], target="first")
    assert "corpus" in grid.info["methods"]["tuned_lens"]["trained_on"] and lens.trained
    with pytest.raises(ld.LensDigitsError, match="no corpus"):
        TunedLens.from_model(llama_model, corpus=str(tmp_path / "missing.txt")).fit(*_empty_sets(llama_model))


def _empty_sets(model):
    from lens_digits.residuals.collect import tokens_only

    empty = tokens_only([], [], model.cfg.n_layers + 1)
    return empty, empty
