"""The deep shipped model, arith-llama-28: the default of lens-digits run, its card against plain Hugging Face, its recipe."""

import json

import pandas as pd
import pytest
import torch

import lens_digits as ld
from lens_digits.builtin import DEFAULT_MODEL, builtin_card, builtin_model_path, list_models, model_source
from lens_digits.cli import main


def test_the_default_is_the_deep_model_and_both_are_listed(capsys):
    assert DEFAULT_MODEL == "arith-llama-28"
    assert model_source(None) == model_source("builtin") == model_source("builtin:arith-llama-28")
    assert model_source("builtin:arith-llama").endswith("arith-llama")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "builtin:arith-llama-28" in out and "28 layers" in out and "the default" in out
    assert "builtin:arith-llama " in out and "4 layers" in out
    assert [name for name, _ in list_models()] == ["arith-llama-28", "arith-llama"]
    with pytest.raises(ld.LensDigitsError, match="no built-in model 'nope'"):
        model_source("builtin:nope")


def test_the_card_describes_the_shipped_checkpoint():
    card = builtin_card()
    folder = builtin_model_path()
    config = json.loads((folder / "config.json").read_text())
    assert config["num_hidden_layers"] == card["recipe"]["n_layers"] == 28
    assert (folder / "model.safetensors").stat().st_size <= 20 * 2**20
    from lens_digits.builtin.recipe import recipe

    assert recipe("arith-llama-28") == ld.builtin.TrainConfig.from_dict(card["recipe"])  # the card's recipe is the shipped one


@pytest.mark.slow
def test_the_deep_models_card_holds_under_plain_hugging_face():
    """Greedy exact match with plain transformers generate (no lens_digits decoding) against the card.

    200 problems per scale (scale 1 has 100 in all): a binomial spread of at most 0.035; 0.08 passes a sound model and
    fails a broken one.
    """
    import transformers

    card = builtin_card()
    folder = builtin_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for scale in card["recipe"]["scales"]:
        problems = ld.generate_problems(ld.TaskConfig(scales=[scale], n_per_scale=200, seed=card["evaluation"]["seed"]))
        by_length: dict[int, list] = {}
        for p in problems:
            ids = tok(p.prompt)["input_ids"]  # BOS first, as the model was trained
            by_length.setdefault(len(ids), []).append((ids, p))
        right = 0
        for group in by_length.values():
            batch = torch.tensor([ids for ids, _ in group])
            with torch.inference_mode():
                out = hf.generate(batch, max_new_tokens=scale + 2, do_sample=False, pad_token_id=tok.pad_token_id)
            for row, (ids, p) in zip(out, group, strict=True):
                text = tok.decode(row[len(ids) :], skip_special_tokens=False).split("</s>")[0]
                right += text == p.answer
        got = right / len(problems)
        want = card["accuracy"]["add"][str(scale)]["accuracy"]
        assert abs(got - want) <= 0.08, (scale, got, want)


@pytest.mark.slow
def test_the_default_run_has_columns_0_to_28_and_its_last_column_is_greedy_exact_match(tmp_path):
    out = tmp_path / "demo"
    assert main(["run", "--out", str(out), "--n", "60", "--no-progress"]) == 0
    grid = pd.read_csv(out / "grid.csv")
    main_rows = grid[(grid["method"] == "logit_lens") & (grid["place"] == "all") & (grid["carries"] == "all")]
    assert sorted(main_rows["layer"].unique()) == list(range(29)) and sorted(main_rows["scale"].unique()) == [1, 2, 3, 4]
    last = main_rows[(main_rows["layer"] == 28) & (main_rows["target"] == "answer")].set_index("scale")["accuracy"]
    card = builtin_card()["accuracy"]["add"]
    for scale in (1, 2, 3, 4):
        assert abs(last[scale] - card[str(scale)]["accuracy"]) <= 0.15, (scale, last[scale], card[str(scale)])


@pytest.mark.slow
def test_the_deep_recipe_trains_for_a_few_steps(tmp_path, capsys):
    out = tmp_path / "deep"
    args = ["train-model", "--recipe", "arith-llama-28", "--steps", "20", "--eval-n", "20", "--eval-scales", "1", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 28 and config["hidden_size"] == 96
    recipe = json.loads((out / "train.json").read_text())["recipe"]
    assert recipe["steps"] == 20 and recipe["scales"] == [1, 2, 3, 4] and recipe["lr"] == 7e-4
    model = ld.load_model(out, device="cpu")
    assert model.cfg.n_layers == 28
