"""The shipped built-in model (``lens_digits.builtin``): its checkpoint folder, BOS for plain transformers, its grid, the CLI default."""

import json

import pytest
import torch

import lens_digits as ld
from lens_digits.builtin import BUILTIN_MODEL_NAME, builtin_card, builtin_model_path
from lens_digits.cli import main
from lens_digits.model.greedy import greedy_answers
from lens_digits.problems.tasks import TaskConfig, generate_problems

# The fixtures `builtin` (the loaded model) and `card` (its card.json) are in conftest.py.


# ---- the shipped checkpoint ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "layers", "max_bytes"), [("arith-llama-28", 28, 9_000_000), ("arith-llama", 4, 5_000_000)])
def test_checkpoint_folders_are_small_llamas(name, layers, max_bytes):
    assert builtin_model_path().name == BUILTIN_MODEL_NAME == "arith-llama-28"  # the default is the deep one
    folder = builtin_model_path(name)
    assert folder.name == name
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == layers
    assert (folder / "model.safetensors").stat().st_size < max_bytes
    for name in ("tokenizer.json", "tokenizer_config.json", "card.json", "README.md", "train.json"):
        assert (folder / name).is_file(), name


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


# ---- the logit-lens grid of the built-in model ---------------------------------------------------


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


# ---- command line --------------------------------------------------------------------------------


def test_cli_run_uses_the_builtin_model_by_default(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--scales", "1-2", "--n", "20", "--no-progress"]) == 0
    for name in ("grid.csv", "prompts.jsonl", "heatmap.html", "run.json"):
        assert (out / name).is_file()
    info = json.loads((out / "run.json").read_text())
    assert info["model"]["n_layers"] == builtin_card()["recipe"]["n_layers"]
    assert BUILTIN_MODEL_NAME in info["model"]["name"]
    assert "logit_lens" in capsys.readouterr().out
