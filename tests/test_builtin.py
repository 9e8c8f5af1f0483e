"""The built-in arithmetic model: the shipped checkpoint, its training code and its CLI."""

import json

import pytest
import torch
from safetensors.torch import load_file

import lens_digits as ld
from lens_digits.builtin import BUILTIN_MODEL_NAME, builtin_card, builtin_model_path, load_builtin_model
from lens_digits.builtin.card import greedy_accuracy
from lens_digits.builtin.recipe import TrainConfig, builtin_tokenizer
from lens_digits.builtin.train import save_trained, train
from lens_digits.cli import main
from lens_digits.errors import LensDigitsError
from lens_digits.generate import greedy_answers
from lens_digits.models import hooked_transformer_class
from lens_digits.tasks import TaskConfig, generate_problems


@pytest.fixture(scope="module")
def builtin():
    return load_builtin_model(device="cpu")


@pytest.fixture(scope="module")
def card():
    return builtin_card()


# ---- the shipped checkpoint ---------------------------------------------------


def test_checkpoint_folder_is_a_small_llama():
    folder = builtin_model_path()
    assert folder.name == BUILTIN_MODEL_NAME
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert 4 <= config["num_hidden_layers"] <= 6
    assert (folder / "model.safetensors").stat().st_size < 5_000_000
    for name in ("tokenizer.json", "tokenizer_config.json", "card.json", "README.md", "train.json"):
        assert (folder / name).is_file(), name


def test_tokenizer_is_one_token_per_character(builtin):
    tok = builtin.tokenizer
    text = "907+58=965"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert ids == builtin_tokenizer()(text, add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in ids] == list(text)
    assert tok.unk_token_id not in ids


def test_plain_transformers_users_get_the_bos_the_model_was_trained_with(builtin):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(builtin_model_path())
    hf = transformers.AutoModelForCausalLM.from_pretrained(builtin_model_path()).eval()
    prompts = ["12+34="] + [p.prompt for p in generate_problems(TaskConfig(scales=[2, 3], n_per_scale=8, seed=3))]
    answers = []
    for prompt in prompts:
        enc = tok(prompt, return_tensors="pt")
        assert enc["input_ids"][0, 0] == tok.bos_token_id
        out = hf.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
        answers.append(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    assert answers[0] == "46"  # without the BOS: "35"
    ids = [[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"] for p in prompts]  # BOS explicit
    assert answers == [o.text for o in greedy_answers(hf, ids, 5, until="eos", tokenizer=tok)]  # lens_digits' own decoder
    # TransformerLens sees a tokenizer that prepends BOS and does not add a second one
    assert builtin.to_str_tokens("12+34=") == ["<s>", "1", "2", "+", "3", "4", "="]


def test_shipped_model_matches_its_card(builtin, card):
    """Greedy exact match under the installed TransformerLens agrees with the card.

    200 problems per scale (the card used 500; scale 1 has 100 in all): a
    binomial spread of about 0.02, so 0.08 passes a sound model and fails a broken one.
    """
    scales = [1, 2, 3, 4]
    got = greedy_accuracy(builtin, scales, ["add"], 200, seed=card["evaluation"]["seed"])
    for s in map(str, scales):
        want = card["accuracy"]["add"][s]["accuracy"]
        assert abs(got["add"][s]["accuracy"] - want) <= 0.08, (s, got["add"][s], want)
    assert got["add"]["1"] == card["accuracy"]["add"]["1"], "scale 1: the same 100 problems, the same answers"
    # the card itself tells the story: strong where trained, weak beyond
    trained = card["recipe"]["scales"]
    assert all(card["accuracy"]["add"][str(s)]["accuracy"] >= 0.9 for s in trained)
    assert card["accuracy"]["add"][str(max(trained) + 1)]["accuracy"] <= 0.5


def test_builtin_card_describes_the_checkpoint(builtin, card):
    assert card["recipe"]["n_layers"] == builtin.cfg.n_layers
    assert card["recipe"]["d_model"] == builtin.cfg.d_model
    weights = load_file(builtin_model_path() / "model.safetensors")
    assert card["n_parameters"] == sum(w.numel() for w in weights.values())
    assert all(w.dtype == torch.float32 for w in weights.values())
    assert TrainConfig.from_dict(card["recipe"]) == TrainConfig(), "the shipped model is trained with the default recipe"


# ---- the logit-lens grid of the built-in model ---------------------------------


@pytest.fixture(scope="module")
def first_grid(builtin):
    return ld.run_sweep(builtin, scales=[1, 2, 3, 4], n_per_scale=200, methods=["logit_lens"], target="first", seed=0)


def test_last_layer_of_logit_lens_is_greedy_first_token(builtin, first_grid):
    n_layers = builtin.cfg.n_layers
    last = first_grid.pivot("logit_lens", "first")[n_layers]
    problems = [p for p in generate_problems(TaskConfig(scales=[1, 2, 3, 4], n_per_scale=200, seed=0)) if p.split == "test"]
    bos = builtin.tokenizer.bos_token_id
    for scale in (1, 2, 3, 4):
        group = [p for p in problems if p.scale == scale]
        tokens = torch.tensor([[bos] + builtin.tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in group])
        with torch.no_grad():
            pred = builtin(tokens)[:, -1].argmax(-1).tolist()
        gold = [builtin.tokenizer(p.answer, add_special_tokens=False)["input_ids"][0] for p in group]
        expected = sum(a == b for a, b in zip(pred, gold, strict=True)) / len(group)
        assert last[scale] == pytest.approx(expected, abs=1e-6), scale


def test_logit_lens_grid_has_structure_across_layers(builtin, first_grid, card):
    n_layers = builtin.cfg.n_layers
    first = first_grid.pivot("logit_lens", "first")
    answer = ld.run_sweep(builtin, scales=[1, 2, 3, 4], n_per_scale=200, target="answer", seed=0).pivot("logit_lens", "answer")
    for scale in card["recipe"]["scales"]:
        row = first.loc[scale]
        assert row[n_layers] >= 0.9 and row[n_layers] >= row[0] + 0.3, (scale, row.tolist())
        # the whole answer is unreadable early and becomes readable with depth
        row = answer.loc[scale]
        assert row[0] <= 0.2 and row[n_layers] >= 0.9, (scale, row.tolist())
        assert all(row[i + 1] >= row[i] - 0.05 for i in range(n_layers)), (scale, row.tolist())
        assert row[n_layers - 1] < row[n_layers] - 0.2, (scale, row.tolist())
    # beyond the trained lengths nothing is readable at any layer
    assert answer.loc[max(card["recipe"]["scales"]) + 1].max() <= 0.2


# ---- training through the same code --------------------------------------------


TINY = dict(n_layers=2, d_model=32, n_heads=2, scales=[1], steps=80, batch_size=32, lr=3e-3, seed=1)


def test_tiny_training_learns_and_round_trips(tmp_path):
    losses = []
    result = train(TrainConfig(**TINY), progress=False, callback=lambda step, loss: losses.append(loss))
    assert len(losses) == TINY["steps"]
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10

    folder = save_trained(result, tmp_path / "tiny")
    loaded = ld.load_model(folder, device="cpu")
    assert loaded.cfg.n_layers == 2
    tokens = torch.tensor([[1, 5, 6, 14, 7, 17], [1, 13, 14, 12, 17, 5]])
    with torch.no_grad():
        want = result.model(input_ids=tokens).logits.log_softmax(-1)
        got = loaded(tokens).log_softmax(-1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    info = json.loads((folder / "train.json").read_text())
    assert info["recipe"]["steps"] == TINY["steps"] and info["losses"]


def test_training_is_deterministic_given_the_seed():
    short = TINY | {"steps": 5}
    a = train(TrainConfig(**short), progress=False).model.state_dict()
    b = train(TrainConfig(**short), progress=False).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


BAD_CONFIGS = [
    dict(n_heads=5),
    dict(n_heads=32),
    dict(ops=["div"]),
    dict(ops="add,div"),
    dict(scales="0"),
    dict(steps=0),
    dict(lr=-1.0),
    dict(mixed=2.0),
]


@pytest.mark.parametrize("bad", BAD_CONFIGS)
def test_train_config_rejects_bad_input(bad):
    with pytest.raises(LensDigitsError):
        TrainConfig(**bad)


# ---- command line ---------------------------------------------------------------


def test_cli_run_uses_the_builtin_model_by_default(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--scales", "1-2", "--n", "20", "--no-progress"]) == 0
    for name in ("grid.csv", "prompts.jsonl", "heatmap.html", "run.json"):
        assert (out / name).is_file()
    info = json.loads((out / "run.json").read_text())
    assert info["model"]["n_layers"] == builtin_card()["recipe"]["n_layers"]
    assert BUILTIN_MODEL_NAME in info["model"]["name"]
    assert "logit_lens" in capsys.readouterr().out


def test_cli_train_model_writes_a_checkpoint_with_a_card(tmp_path, capsys):
    out = tmp_path / "m"
    args = ["train-model", "--out", str(out), "--layers", "1", "--d-model", "16", "--heads", "2", "--steps", "3"]
    assert main(args + ["--scales", "1-2", "--eval-n", "3", "--no-progress"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["recipe"]["n_layers"] == 1 and set(card["accuracy"]) == {"add", "sub", "mul"}
    assert "| scale |" in capsys.readouterr().out
    assert ld.load_model(out, device="cpu").cfg.d_model == 16


def test_cli_train_model_overwrite_replaces_only_a_trained_checkpoint(tmp_path, capsys):
    args = ["train-model", "--layers", "1", "--d-model", "16", "--heads", "2", "--steps", "2", "--eval-n", "0", "--no-progress"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    (mine / "notes.txt").chmod(0o600)
    assert main(args + ["--out", str(mine), "--overwrite"]) == 2
    assert "not written by lens-digits" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep" and (mine / "notes.txt").stat().st_mode & 0o777 == 0o600
    out = tmp_path / "ckpt"
    assert main(args + ["--out", str(out)]) == 0
    first = (out / "model.safetensors").read_bytes()
    assert main(args + ["--out", str(out)]) == 2, "no overwrite without --overwrite"
    assert main(args + ["--out", str(out), "--overwrite", "--seed", "5"]) == 0
    assert (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "mine"]


@pytest.mark.parametrize(
    "extra",
    [["--heads", "5"], ["--ops", "div"], ["--scales", "0"], ["--steps", "0"], ["--eval-n", "-1"], ["--layers", "x"]],
)
def test_cli_train_model_bad_input_exits_2_with_one_line(tmp_path, capsys, extra):
    out = tmp_path / "m"
    code = main(["train-model", "--out", str(out), "--no-progress"] + extra) if extra[1] != "x" else None
    if code is None:
        with pytest.raises(SystemExit) as e:
            main(["train-model", "--out", str(out)] + extra)
        code = e.value.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(
    hooked_transformer_class() is not None,
    reason="training uses no TransformerLens; the ~8 min retrain runs once, under TransformerLens 4.x",
)
def test_default_recipe_keeps_the_cards_promises_on_any_machine(tmp_path, card):
    """Retraining gives the same weights only on the machine that made them; elsewhere, what the card promises.

    The card's bounds come from retraining with other seeds and thread counts (the same kind of
    difference another CPU makes): benchmarks/retrain_spread.py, numbers in the card.
    """
    out = tmp_path / "retrained"
    assert main(["train-model", "--out", str(out), "--no-progress", "--eval-n", str(card["evaluation"]["n_per_scale"])]) == 0
    again = json.loads((out / "card.json").read_text())
    for op, by_scale in card["promises"].items():
        for s, (low, high) in by_scale.items():
            got = again["accuracy"][op][s]["accuracy"]
            assert low <= got <= high, (op, s, got, (low, high))
