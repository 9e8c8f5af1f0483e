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
    """(tests/integration/test_builtin_card.py holds the card's accuracies against plain Hugging Face.)"""
    card = builtin_card()
    folder = builtin_model_path()
    config = json.loads((folder / "config.json").read_text())
    assert config["num_hidden_layers"] == card["recipe"]["n_layers"] == 28
    assert (folder / "model.safetensors").stat().st_size <= 20 * 2**20
    from safetensors.torch import load_file

    weights = load_file(folder / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float16} and card["checkpoint_dtype"] == "float16"
    assert card["n_parameters"] == sum(w.numel() for w in weights.values())
    assert next(ld.load_builtin_model(device="cpu").parameters()).dtype == torch.float32  # loaded in float32
    from lens_digits.builtin.recipe import recipe

    assert recipe("arith-llama-28") == ld.builtin.TrainConfig.from_dict(card["recipe"])  # the card's recipe is the shipped one


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
