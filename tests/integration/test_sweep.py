"""run_sweep: settings refused before any work, same seed same grid, subsets, the model target, logit lens and probes in one sweep."""

import pandas as pd
import pytest
import torch

import lens_digits as ld
from lens_digits.cli import main
from lens_digits.runs.config import SweepConfig

# ---- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [-1, 0, True, 10**9])
def test_run_sweep_refuses_a_bad_batch_size(native_model, batch_size):
    with pytest.raises(ld.LensDigitsError, match="batch_size"):
        ld.run_sweep(native_model, scales=[1], n_per_scale=10, batch_size=batch_size)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(subset="some"), "unknown subset"),
        (dict(target="middle"), "unknown target"),
        (dict(target=[]), "no target given"),
        (dict(methods=[]), "no methods given"),
        (dict(probe_scope="global"), "unknown probe scope"),
        (dict(seed=-1), "seed must be a non-negative integer"),
        (dict(n_per_scale=10**7), "above the limit"),
        (dict(template="{a:q}{b}"), "cannot be filled in"),
    ],
)
def test_run_sweep_refuses_bad_settings_before_running(native_model, kwargs, message, monkeypatch):
    monkeypatch.setattr(native_model, "run_with_hooks", lambda *a, **k: pytest.fail("the model must not run"))
    with pytest.raises(ld.LensDigitsError, match=message):
        ld.run_sweep(native_model, **({"scales": [1], "n_per_scale": 10} | kwargs))


def test_a_method_string_is_one_method_not_its_letters(native_model):
    grid = ld.run_sweep(native_model, scales=[1], n_per_scale=10, methods="logit_lens", target="first")
    assert grid.methods == ["logit_lens"]
    assert SweepConfig(methods="logit_lens,probe").methods == ("logit_lens", "probe")


def test_context_too_long_is_a_clear_error(char_tok):
    model = ld.build_model(tokenizer=char_tok, n_layers=1, n_ctx=12)
    with pytest.raises(ld.ContextLengthError, match="longer than the model's context of 12"):
        ld.run_sweep(model, scales=[3], n_per_scale=10, few_shot=2)


# ---- reproducibility -----------------------------------------------------------------------------


def test_same_seed_same_grid(llama_model):
    a = ld.run_sweep(llama_model, scales=[1, 2], n_per_scale=30, seed=5, target="both").to_dataframe()
    b = ld.run_sweep(llama_model, scales=[1, 2], n_per_scale=30, seed=5, target="both").to_dataframe()
    assert a.equals(b)


def test_run_sweep_leaves_the_global_random_state_alone(native_model):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    ld.run_sweep(native_model, scales=[1, 2], n_per_scale=30, methods=["logit_lens", "probe"], target="first")
    assert torch.equal(torch.get_rng_state(), before)


# ---- the model's own answers: target model, subsets ----------------------------------------------


def test_model_target_reads_the_models_own_greedy_answer(llama_model, llama_dir):
    grid = ld.run_sweep(llama_model, scales=[1, 2], n_per_scale=30, target="all", seed=3)
    df = grid.main()
    model_rows = df[df["target"] == "model"]
    # at the last layer the lens agrees with what the model says, by construction of greedy decoding
    last = model_rows[model_rows["layer"] == model_rows["layer"].max()]
    assert (last["accuracy"] == 1.0).all()
    # greedy answers run on the scored test problems only
    assert {p.model_output is not None for p in grid.problems if p.split == "test"} == {True}
    assert {p.model_output for p in grid.problems if p.split != "test"} == {None}
    # model_correct against plain Hugging Face greedy generation on the same checkpoint (no TransformerLens, no cache
    # of ours): the leading number of what it writes, compared with the answer
    import re

    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(llama_dir)
    bos = grid.info["encoding"]["bos"]["id"]
    tests = [p for p in grid.problems if p.split == "test"]
    for p in tests:
        ids = ([bos] if bos is not None else []) + tok(p.prompt, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=len(p.answer) + 2, do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, len(ids) :], skip_special_tokens=False)
        number = re.match(r"\s*(-?\d*)", text).group(1)
        assert p.model_correct == (number == p.answer), (p.prompt, text, p.model_output)
    assert grid.info["model_runs"]["greedy"] == len(tests)


def test_subset_solved_scores_only_solved_problems(tmp_path):
    from lens_digits.testing import char_tokenizer

    model = ld.build_model(tokenizer=char_tokenizer(), n_layers=1)
    grid = ld.run_sweep(model, scales=[1], n_per_scale=40, target="answer", subset="unsolved")
    unsolved = [p for p in grid.problems if p.split == "test" and not p.model_correct]
    assert grid.to_dataframe()["n"].iloc[0] == len(unsolved)
    with pytest.raises(ld.LensDigitsError, match="no test problems left"):
        ld.run_sweep(model, scales=[1], n_per_scale=40, target="answer", subset="solved")


# ---- logit lens and probes in one sweep, on the same test problems -------------------------------


def test_run_sweep_with_logit_lens_and_probe():
    grid = ld.run_sweep(ld.testing.tiny_model(), scales=[1, 2], n_per_scale=40, methods=["logit_lens", "probe"], target="both", seed=0)
    df = grid.to_dataframe()
    assert {"place", "chance", "control", "selectivity"} <= set(df.columns)
    probe_rows = df[df["method"] == "probe"]
    assert set(probe_rows["place"]) == {"all", "units", "tens", "hundreds"}
    assert probe_rows["chance"].notna().all() and probe_rows["control"].notna().all()
    assert set(probe_rows["target"]) == {"first", "answer"}
    main = df[df["place"] == "all"]
    key = ["target", "scale", "layer"]
    n_lens = main[main["method"] == "logit_lens"].set_index(key)["n"].sort_index()
    n_probe = main[main["method"] == "probe"].set_index(key)["n"].sort_index()
    assert n_lens.equals(n_probe)
    assert grid.info["methods"]["probe"]["scope"] == "per_scale"


@pytest.fixture(scope="module")
def both(llama_model):
    return ld.run_sweep(llama_model, scales=[1, 2], n_per_scale=60, methods=["logit_lens", "probe"], target="both", seed=1)


def test_both_methods_scored_on_the_same_problems(both):
    df = both.main()
    n = df.pivot_table(index=["scale", "target"], columns="method", values="n")
    assert (n["probe"] == n["logit_lens"]).all()
    assert {"chance", "control", "selectivity"} <= set(df.columns)
    places = set(both.to_dataframe()["place"])
    assert {"all", "units", "tens"} <= places


def test_the_control_and_selectivity_agree_with_scikit_learn_on_the_control_task(both, llama_model):
    """The control column is a probe fitted on the control task's labels: refit one cell with scikit-learn and compare."""
    from sklearn.linear_model import LogisticRegression

    from lens_digits.methods.probes.labels import control_labels
    from lens_digits.residuals import collect_residuals

    settings = both.info["methods"]["probe"]
    scale, place, layer = 2, 1, both.info["model"]["n_layers"]  # tens place of 2-digit sums, final residual
    group = [g for g, scales in enumerate(settings["group_scales"]) if scale in scales][0]
    c = settings["control_chosen_C"][group][layer][place]
    problems = [p for p in both.problems if p.scale == scale and p.split in ("train", "test")]
    data = collect_residuals(llama_model, problems, teacher_forcing=False)
    x = data.resid[:, layer, 0].double().numpy()
    labels = control_labels(problems, settings["control_perm"], settings["n_places"][group])[:, place].numpy()
    train = [i for i, p in enumerate(problems) if p.split == "train"]
    test = [i for i, p in enumerate(problems) if p.split == "test"]
    mean, std = x[train].mean(0), x[train].std(0)
    std[std < 1e-12] = 1
    sk = LogisticRegression(C=c, max_iter=10000, tol=1e-10).fit((x[train] - mean) / std, labels[train])
    control = (sk.predict((x[test] - mean) / std) == labels[test]).mean()
    rows = both.to_dataframe()
    cell = rows[(rows.method == "probe") & (rows.target == "answer") & (rows.scale == scale) & (rows.layer == layer)]
    cell = cell[cell["place"] == "tens"]
    for column in ("carries", "carry_in"):
        if column in cell.columns:
            cell = cell[cell[column] == "all"]
    tens = cell.iloc[0]
    n = int(tens["n"])
    assert abs(tens["control"] - control) <= 1 / n + 1e-9  # the same fit, to one problem
    assert abs(tens["selectivity"] - (tens["accuracy"] - control)) <= 1 / n + 1e-9


def test_difference_and_selectivity_figures(both):
    diff = both.difference("probe", "logit_lens", target="answer")
    expected = both.pivot("probe", "answer") - both.pivot("logit_lens", "answer")
    pd.testing.assert_frame_equal(diff.pivot("probe - logit_lens", "answer"), expected)
    assert diff.figure().layout.title.text == "Accuracy Difference: probe minus logit_lens"
    fig = both.figure(value="selectivity")
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert fig.layout.title.text.startswith("Selectivity") and len(heatmaps) == 2  # probes only, two targets
    units = [t.name for t in both.figure(place="units").data if t.type == "heatmap"]
    # probes have place rows for both targets; the lenses for whole answers only (a first token is not a place)
    assert sorted(units) == ["logit_lens · answer", "probe · answer", "probe · first"]
    assert len([t for t in both.figure().data if t.type == "heatmap"]) == 4  # two methods x two targets


def test_probe_scope_from_api_and_cli(llama_dir, llama_model, tmp_path, capsys):
    pooled = ld.run_sweep(llama_model, scales=[1, 2], n_per_scale=60, methods=["probe"], target="answer", probe_scope="pooled", seed=1)
    assert pooled.info["methods"]["probe"]["scope"] == "pooled"
    out = tmp_path / "run"
    code = main(
        ["run", "--model", str(llama_dir), "--scales", "1-2", "--n", "60", "--seed", "1", "--methods", "logit_lens,probe"]
        + ["--probe-scope", "pooled", "--target", "answer", "--out", str(out), "--no-progress"]
    )
    assert code == 0
    csv = pd.read_csv(out / "grid.csv", keep_default_na=False, na_values=[""])
    api = pooled.to_dataframe()
    probe_rows = csv[csv["method"] == "probe"].reset_index(drop=True)
    pd.testing.assert_frame_equal(probe_rows[api.columns], api, check_dtype=False)
    assert ld.AccuracyGrid.load(out).figure().layout.title.text == "Accuracy Breakdown"


def test_places_a_scale_does_not_have_get_no_rows(both):
    df = both.to_dataframe()
    probe = df[(df["method"] == "probe") & (df["target"] == "answer")]
    # 1-digit sums are at most 18: two places; 2-digit sums at most 198: three places
    assert set(probe.loc[probe["scale"] == 1, "place"]) == {"all", "units", "tens"}
    assert set(probe.loc[probe["scale"] == 2, "place"]) == {"all", "units", "tens", "hundreds"}


# ---- what a researcher meets in the first hour -----------------------------------------------------


def test_lens_cells_carry_the_constant_answer_baseline(llama_model):
    from collections import Counter

    grid = ld.run_sweep(llama_model, scales=[2, 3], n_per_scale=40, target="both", seed=2)
    df = grid.main()
    for scale in (2, 3):
        train = [p for p in grid.problems if p.scale == scale and p.split == "train"]
        test = [p for p in grid.problems if p.scale == scale and p.split == "test"]
        tok = llama_model.tokenizer
        first = Counter(tok(p.answer, add_special_tokens=False)["input_ids"][0] for p in train).most_common(1)[0][0]
        expected = sum(tok(p.answer, add_special_tokens=False)["input_ids"][0] == first for p in test) / len(test)
        rows = df[(df["scale"] == scale) & (df["target"] == "first")]
        assert rows["baseline"].round(6).eq(round(expected, 6)).all(), (scale, rows["baseline"].tolist(), expected)


def test_all_targets_give_each_method_what_it_reads(llama_model):
    grid = ld.run_sweep(llama_model, scales=[2], n_per_scale=20, methods=["logit_lens", "probe"], target="all")
    pairs = set(zip(grid.table["method"], grid.table["target"], strict=True))
    assert pairs == {("logit_lens", t) for t in ("first", "answer", "model")} | {("probe", "first"), ("probe", "answer")}
    with pytest.raises(ld.LensDigitsError, match="reads none of the targets"):
        ld.run_sweep(llama_model, scales=[2], n_per_scale=20, methods=["probe"], target="model")


def test_fitting_decoders_alone_run_the_model_on_train_problems(llama_model):
    lens = ld.run_sweep(llama_model, scales=[2], n_per_scale=20, target="first")
    both = ld.run_sweep(llama_model, scales=[2], n_per_scale=20, target="first", methods=["logit_lens", "probe"])
    assert lens.info["model_runs"]["residuals"] == 20 and both.info["model_runs"]["residuals"] == 20 + 60 + 20
    # prompts.jsonl says which problems the model ran on
    assert [p.model_ran for p in lens.problems] == [p.split == "test" for p in lens.problems]
    assert all(p.model_ran for p in both.problems) and len(both.problems) == 100
    # and the logit lens reads the same test problems either way
    a, b = lens.pivot("logit_lens", "first"), both.pivot("logit_lens", "first")
    pd.testing.assert_frame_equal(a, b)


def test_prompts_with_characters_the_tokenizer_lacks_warn(llama_model):
    with pytest.warns(UserWarning, match=r"5 of 5 problems contain characters this tokenizer does not know \(characters 'é'\)"):
        ld.run_sweep(llama_model, scales=[1], n_per_scale=5, n_train=0, n_val=0, template="{a}{op}{b}=é")


def test_a_tokenizer_whose_bos_is_its_unknown_token_gives_no_false_warning(gpt2_model):
    """GPT-2 and Pythia use one special token for BOS, EOS and unknown; a spaced template spells a space as 'Ġ'."""
    import warnings

    tok = gpt2_model.tokenizer
    assert tok.unk_token_id == tok.bos_token_id == tok.eos_token_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        ld.run_sweep(gpt2_model, scales=[1, 2], n_per_scale=10, template="{a} + {b} =", answer_prefix=" ", prepend_bos=True)


def test_the_builtin_model_warns_about_what_it_was_not_trained_on(builtin):
    with pytest.warns(UserWarning, match="trained on add only, not 'sub'"):
        ld.run_sweep(builtin, scales=[2], n_per_scale=5, op="sub")
    with pytest.warns(UserWarning, match="compact template"):
        ld.run_sweep(builtin, scales=[2], n_per_scale=5, template="spaced")


def test_the_builtin_model_does_not_warn_about_a_filtered_addition(builtin):
    import warnings

    from lens_digits.problems.operations import OPERATIONS

    if "add_even_units" not in OPERATIONS:
        ld.register_operation(ld.Operation("add_even_units", "+", lambda a, b: a + b, allowed=lambda a, b: (a + b) % 2 == 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grid = ld.run_sweep(builtin, scales=[2], n_per_scale=5, op="add_even_units")
    assert grid.to_dataframe()["n"].iloc[0] == 5
