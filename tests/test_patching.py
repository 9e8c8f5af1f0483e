"""Activation patching: against the same patch done with plain Hugging Face hooks, its invariants, and in a sweep."""

import warnings

import pytest
import torch
import transformers
from reference import blocks, final_norm

import lens_digits as ld
from lens_digits.adapter import ModelAdapter
from lens_digits.errors import LensDigitsError
from lens_digits.patching import ActivationPatching, draw_sources, patched_greedy
from lens_digits.residuals import collect_residuals
from lens_digits.tasks import TaskConfig, generate_problems
from lens_digits.testing import ARCHITECTURES, char_tokenizer, save_checkpoint


def hf_patched_next_token(hf, t_ids, s_ids, layer):
    """The next token after prompt t with the input of block ``layer`` (the final norm's input for the last column) at the
    last position replaced by prompt s's, with transformers' own forward hooks."""
    modules = [*blocks(hf), final_norm(hf)]
    kept = {}

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        kept["h"] = hidden[:, -1].clone()

    def put(module, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).clone()
        hidden[:, -1] = kept["h"]
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    with torch.no_grad():
        handle = modules[layer].register_forward_pre_hook(grab, with_kwargs=True)
        hf(torch.tensor([s_ids]))
        handle.remove()
        handle = modules[layer].register_forward_pre_hook(put, with_kwargs=True)
        logits = hf(torch.tensor([t_ids])).logits
        handle.remove()
    return int(logits[0, -1].argmax())


def sources_of(data, seed=0):
    return draw_sources(data.problems, [len(e.prompt_ids) for e in data.encoded], [e.answer_ids[0] for e in data.encoded], seed)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_patched_tokens_equal_plain_hugging_face_hooks(arch, tmp_path):
    folder = save_checkpoint(tmp_path / arch, arch, char_tokenizer(), n_layers=2, d_model=32)
    model = ld.load_model(folder, device="cpu", progress=False)
    adapter = ModelAdapter.wrap(model)
    data = collect_residuals(model, generate_problems(TaskConfig(scales=[2], n_per_scale=8, n_train=0, n_val=0)), teacher_forcing=False)
    src = sources_of(data)
    pairs = [(i, s) for i, s in enumerate(src) if s is not None]
    assert len(pairs) >= 6
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    t_ids = torch.tensor([list(data.encoded[i].prompt_ids) for i, _ in pairs])
    for layer in range(data.n_columns):
        ours = patched_greedy(adapter, t_ids, layer, data.resid[[s for _, s in pairs], layer, 0], steps=1)[:, 0].tolist()
        want = [hf_patched_next_token(hf, list(data.encoded[i].prompt_ids), list(data.encoded[s].prompt_ids), layer) for i, s in pairs]
        assert ours == want, f"layer {layer}"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_last_column_says_what_the_source_says_and_column_0_changes_nothing(arch, tmp_path):
    folder = save_checkpoint(tmp_path / arch, arch, char_tokenizer(), n_layers=2, d_model=32)
    model = ld.load_model(folder, device="cpu", progress=False)
    adapter = ModelAdapter.wrap(model)
    data = collect_residuals(model, generate_problems(TaskConfig(scales=[2, 3], n_per_scale=10, n_train=0, n_val=0)), teacher_forcing=False)
    src = sources_of(data)
    pairs = [(i, s) for i, s in enumerate(src) if s is not None]
    by_length = {}
    for i, s in pairs:
        by_length.setdefault(len(data.encoded[i].prompt_ids), []).append((i, s))
    for group in by_length.values():
        t = torch.tensor([list(data.encoded[i].prompt_ids) for i, _ in group])
        s = torch.tensor([list(data.encoded[j].prompt_ids) for _, j in group])
        own_t = adapter.last_logits(t).argmax(-1)
        own_s = adapter.last_logits(s).argmax(-1)
        sources = data.resid[[j for _, j in group]]
        last = patched_greedy(adapter, t, data.n_columns - 1, sources[:, -1, 0], steps=1)[:, 0]
        first = patched_greedy(adapter, t, 0, sources[:, 0, 0], steps=1)[:, 0]
        assert torch.equal(last, own_s)  # the final residual decides the next token alone
        assert torch.equal(first, own_t)  # the same token's embedding at the same position: nothing changes


def test_sources_share_scale_and_length_and_differ_in_the_first_answer_token():
    problems = generate_problems(TaskConfig(scales=[1, 2, 3], n_per_scale=30, n_train=0, n_val=0, seed=3))
    lengths = [len(p.prompt) for p in problems]
    first = [int(p.answer[0]) for p in problems]
    src = draw_sources(problems, lengths, first, seed=1)
    assert src == draw_sources(problems, lengths, first, seed=1)  # seeded
    assert src != draw_sources(problems, lengths, first, seed=2)
    for i, s in enumerate(src):
        assert s is not None and s != i
        assert problems[s].scale == problems[i].scale and lengths[s] == lengths[i] and first[s] != first[i]
    assert draw_sources(problems[:1], lengths[:1], first[:1]) == [None]  # no partner: not patched


@pytest.fixture(scope="module")
def builtin():
    return ld.load_builtin_model()


def test_sweep_puts_patching_on_the_grid_with_recorded_pairs(builtin, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        grid = ld.run_sweep(builtin, scales=[1, 2], n_per_scale=30, methods=["logit_lens", "patch"], target="both", seed=2)
    df = grid.main()
    patch = df[df.method == "patch"]
    last = builtin.cfg.n_layers
    first = patch[patch.target == "first"]
    # column 0 flips nothing and keeps every answer; the final residual flips every first token the model gets right
    assert (first[first.layer == 0]["accuracy"] == 0).all() and (first[first.layer == 0]["keep"] == 1).all()
    assert (first[first.layer == last]["accuracy"] == 1).all()
    assert ((patch["accuracy"] + patch["keep"] + patch["neither"]).round(9) == 1).all()
    assert set(patch["target"]) == {"first", "answer"} and {"ci_low", "ci_high"} <= set(patch.columns)
    assert "patch" in set(grid.emergence["method"])
    tests = [p for p in grid.problems if p.split == "test"]
    by_prompt = {p.prompt: p for p in tests}
    assert all(p.patch_source in by_prompt and by_prompt[p.patch_source].scale == p.scale for p in tests if p.patch_source)
    assert sum(p.patch_source is not None for p in tests) == int(patch[(patch.target == "first") & (patch.layer == 0)]["n"].sum())
    back = ld.AccuracyGrid.load(grid.save(tmp_path / "run"))
    assert [p.patch_source for p in back.problems] == [p.patch_source for p in grid.problems]
    assert grid.record.methods["patch"]["pairs_patched"] > 0


def test_pairs_caps_the_pairs_per_scale_and_bad_values_are_refused(builtin):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        grid = ld.run_sweep(builtin, scales=[2, 3], n_per_scale=20, methods=["patch"], target="first", pairs=5)
    assert set(grid.main()["n"]) == {5}
    with pytest.raises(LensDigitsError, match="pairs"):
        ld.run_sweep(builtin, scales=[2], n_per_scale=20, methods=["patch"], pairs=0)
    with pytest.raises(LensDigitsError, match="model"):
        ld.run_sweep(builtin, scales=[2], n_per_scale=20, methods=["patch"], target="model")
    data = collect_residuals(builtin, generate_problems(TaskConfig(scales=[2], n_per_scale=4, n_train=0, n_val=0)), teacher_forcing=False)
    with pytest.raises(LensDigitsError, match="targets"):
        ActivationPatching().score(ModelAdapter.wrap(builtin), data, "model")
