"""Activation patching: against the same patch done with plain Hugging Face hooks, its invariants, and in a sweep."""

import warnings

import pytest
import torch
import transformers
from reference import blocks, final_norm

import lens_digits as ld
from lens_digits.errors import LensDigitsError
from lens_digits.methods.interventions.patching import (
    ActivationPatching,
    OperandPatching,
    draw_sources,
    operand_positions,
    patched_greedy,
    residuals_at,
)
from lens_digits.model.adapter import ModelAdapter
from lens_digits.problems.tasks import Problem, TaskConfig, generate_problems, operand_spans
from lens_digits.residuals.collect import collect_residuals
from lens_digits.testing import ARCHITECTURES, bpe_tokenizer, char_tokenizer, save_checkpoint


def hf_patched_next_token(hf, t_ids, s_ids, layer, positions=(-1,)):
    """The next token after prompt t with the input of block ``layer`` (the final norm's input for the last column) at
    ``positions`` (default: the last) replaced by prompt s's there, with transformers' own forward hooks."""
    modules = [*blocks(hf), final_norm(hf)]
    kept = {}
    at = list(positions)

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        kept["h"] = hidden[:, at].clone()

    def put(module, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).clone()
        hidden[:, at] = kept["h"]
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


def tiny(tmp_path, arch, scales, n):
    """A two-layer checkpoint of ``arch`` with the character tokenizer, its adapter, and ``n`` test problems a scale's
    residuals at the last prompt position."""
    folder = save_checkpoint(tmp_path / arch, arch, char_tokenizer(), n_layers=2, d_model=32)
    model = ld.load_model(folder, device="cpu", progress=False)
    problems = generate_problems(TaskConfig(scales=scales, n_per_scale=n, n_train=0, n_val=0))
    return folder, ModelAdapter.wrap(model), collect_residuals(model, problems, teacher_forcing=False)


def sources_of(data, seed=0):
    return draw_sources(data.problems, [len(e.prompt_ids) for e in data.encoded], [e.answer_ids[0] for e in data.encoded], seed)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_patched_tokens_equal_plain_hugging_face_hooks(arch, tmp_path):
    folder, adapter, data = tiny(tmp_path, arch, [2], 8)
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
    _, adapter, data = tiny(tmp_path, arch, [2, 3], 10)
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
    counts = (patch["accuracy"] + patch["keep"] + patch["neither"]) * patch["n"]  # fractions of n, stored in float32
    assert ((counts - patch["n"]).abs() < 1e-4).all()
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


def operand_pairs(data, template="compact", tokenizer=None):
    """(test, source, operand positions) for every problem with a source whose operands sit at the same positions."""
    where = operand_positions(tokenizer or char_tokenizer(), data.problems, data.encoded, template)
    lengths = [len(e.prompt_ids) for e in data.encoded]
    src = draw_sources(data.problems, lengths, [e.answer_ids[0] for e in data.encoded], 0, same=where)
    return [(i, s, where[i]) for i, s in enumerate(src) if s is not None]


def test_operand_spans_and_positions_find_the_question_operands_only():
    few = generate_problems(TaskConfig(scales=[2], n_per_scale=3, n_train=0, n_val=0, few_shot=2, template="{a:>3} plus {b!r} is"))
    for p in few:
        assert [p.prompt[s:e] for s, e in operand_spans(p, "{a:>3} plus {b!r} is")] == [f"{p.a:>3}", repr(p.b)]
        assert operand_spans(p, "{a:>3} plus {b!r} is")[0][0] > p.prompt.rindex("\n")  # the few-shot examples' operands are not
    with pytest.raises(LensDigitsError, match="does not end with template"):
        operand_spans(Problem(1, "add", 1, 2, "1+2=", "3", "test"), "spaced")
    # one token per character: the operand digits are the operand positions (BOS shifts them by one)
    tok = char_tokenizer()
    p = Problem(2, "add", 12, 34, "12+34=", "46", "test")
    from lens_digits.problems.targets import encode_problems

    enc = encode_problems(tok, [p.prompt], [p.answer], bos_token_id=tok.bos_token_id)
    assert operand_positions(tok, [p], enc, "compact") == [(1, 2, 4, 5)]
    # a BPE tokenizer merges digits and the space before them: those tokens count, the '+' and '=' do not
    bpe = bpe_tokenizer()
    q = Problem(2, "add", 12, 34, "12 + 34 =", "46", "test", answer_prefix=" ")
    enc = encode_problems(bpe, [q.prompt], [" 46"])
    (where,) = operand_positions(bpe, [q], enc, "{a} {op} {b} =")
    pieces = [bpe.decode([enc[0].prompt_ids[k]]) for k in where]
    assert "".join(pieces).replace(" ", "") == "1234" and all(any(c.isdigit() for c in x) for x in pieces)


def test_slow_tokenizers_and_other_templates_are_refused_clearly():
    class Slow:
        is_fast = False

    p = Problem(1, "add", 1, 2, "1+2=", "3", "test")
    with pytest.raises(LensDigitsError, match="fast tokenizer"):
        operand_positions(Slow(), [p], [], "compact")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_operand_patches_equal_plain_hugging_face_hooks(arch, tmp_path):
    folder, adapter, data = tiny(tmp_path, arch, [2], 8)
    pairs = operand_pairs(data)
    assert len(pairs) >= 6
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    t_ids = torch.tensor([list(data.encoded[i].prompt_ids) for i, _, _ in pairs])
    at = torch.tensor([w for _, _, w in pairs])
    src = residuals_at(adapter, torch.tensor([list(data.encoded[s].prompt_ids) for _, s, _ in pairs]), at)
    for layer in range(data.n_columns):
        ours = patched_greedy(adapter, t_ids, layer, src[:, layer], steps=1, positions=at)[:, 0].tolist()
        want = [
            hf_patched_next_token(hf, list(data.encoded[i].prompt_ids), list(data.encoded[s].prompt_ids), layer, w) for i, s, w in pairs
        ]
        assert ours == want, f"layer {layer}"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_operands_patched_at_column_0_ask_the_source_question_and_at_the_last_column_change_nothing(arch, tmp_path):
    _, adapter, data = tiny(tmp_path, arch, [2, 3], 10)
    groups = {}
    for i, s, w in operand_pairs(data):
        groups.setdefault((len(data.encoded[i].prompt_ids), w), []).append((i, s))
    checked = 0
    for (_, w), group in groups.items():
        t = torch.tensor([list(data.encoded[i].prompt_ids) for i, _ in group])
        s = torch.tensor([list(data.encoded[j].prompt_ids) for _, j in group])
        at = torch.tensor([w] * len(group))
        others = [k for k in range(t.shape[1]) if k not in w]
        assert torch.equal(t[:, others], s[:, others])  # the prompts differ at the operands only
        src = residuals_at(adapter, s, at)
        first = patched_greedy(adapter, t, 0, src[:, 0], steps=1, positions=at)[:, 0]
        last = patched_greedy(adapter, t, data.n_columns - 1, src[:, -1], steps=1, positions=at)[:, 0]
        assert torch.equal(first, adapter.last_logits(s).argmax(-1))  # the source's own question, token for token
        assert torch.equal(last, adapter.last_logits(t).argmax(-1))  # nothing after the final residual reads the operands
        checked += len(group)
    assert checked >= 15


def test_operand_patching_on_the_grid_beside_the_last_position(builtin, tmp_path):
    """On the built-in model the answer moves from the operands (columns 0-1) to the last prompt token (2 onwards)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        grid = ld.run_sweep(builtin, scales=[2, 3], n_per_scale=30, methods=["patch", "patch_operands"], target="both", seed=1)
    df = grid.main()
    ops, last = df[df.method == "patch_operands"], df[df.method == "patch"]
    n_cols = builtin.cfg.n_layers + 1
    assert set(ops["layer"]) == set(range(n_cols)) and set(ops["target"]) == {"first", "answer"}
    final = ops[ops.layer == n_cols - 1]
    assert (final["accuracy"] == 0).all() and (final["keep"] == 1).all()  # the final residual's operands are read by nothing
    # column 0: the patched model answers s's question as the model itself does (the built-in model solves these)
    assert (ops[ops.layer == 0]["accuracy"] >= 0.9).all()
    early = ops[ops.layer <= 1].groupby("scale")["accuracy"].mean()
    late = last[last.layer <= 1].groupby("scale")["accuracy"].mean()
    assert (early > late + 0.5).all()
    assert grid.record.methods["patch_operands"]["position"] == "operand tokens of the question"
    tests = [p for p in grid.problems if p.split == "test" and p.patch_source]
    assert tests and all(len(p.patch_source) == len(p.prompt) for p in tests)


def test_operand_patching_follows_the_template_and_its_grid_is_reproducible(builtin):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        a = ld.run_sweep(builtin, scales=[2], n_per_scale=12, methods=["patch_operands"], target="first", seed=4, few_shot=1)
        b = ld.run_sweep(builtin, scales=[2], n_per_scale=12, methods=["patch_operands"], target="first", seed=4, few_shot=1)
    assert a.main().equals(b.main())
    data = collect_residuals(builtin, generate_problems(TaskConfig(scales=[2], n_per_scale=4, n_train=0, n_val=0)), teacher_forcing=False)
    with pytest.raises(LensDigitsError, match="template"):
        OperandPatching(template="{a} {op} {b} =").score(ModelAdapter.wrap(builtin), data, "first")
