"""The model card (``lens_digits.builtin.card``): greedy accuracy of the shipped model against its card, and what the card records."""

import torch
from safetensors.torch import load_file

from lens_digits.builtin import builtin_model_path
from lens_digits.builtin.card import greedy_accuracy
from lens_digits.builtin.recipe import TrainConfig


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
