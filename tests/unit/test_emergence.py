"""Emergence layers: hand-counted tables, the bootstrap interval, several seeds, and what a run directory keeps."""

import math

import pandas as pd
import pytest
import torch

import lens_digits as ld
from lens_digits.problems.tasks import TaskConfig
from lens_digits.results.emergence import Bootstrap, emergence_text, first_layer
from lens_digits.runs.config import SweepConfig
from lens_digits.runs.sweep import sweep


def table(accuracies, n):
    """A problem x layer correctness table whose layer l has round(accuracies[l] * n) correct problems."""
    correct = torch.zeros(n, len(accuracies), dtype=torch.bool)
    for layer, acc in enumerate(accuracies):
        correct[: round(acc * n), layer] = True
    return correct


def test_first_layer_on_a_hand_table():
    acc = torch.tensor([[0.1, 0.6, 0.4, 0.95], [0.2, 0.3, 0.4, 0.45], [0.5, 0.5, 0.9, 0.9]])
    assert first_layer(acc, 0.5).tolist() == [1.0, math.inf, 0.0]
    assert first_layer(acc, 0.9).tolist() == [3.0, math.inf, 2.0]  # a cell exactly at the threshold reaches it


def test_bootstrap_interval_brackets_the_layer_and_narrows_with_n():
    rows = Bootstrap(n_boot=500, seed=0).emergence(table([0.1, 0.45, 0.55, 0.97], 40), [0.5, 0.9])
    half, most = rows
    assert half["layer"] == 2 and half["ci_low"] <= 2 <= half["ci_high"] and half["ci_low"] <= 1  # 0.45 vs 0.55 on 40: unsure
    assert most["layer"] == 3 and most["ci_low"] == most["ci_high"] == 3
    big = Bootstrap(n_boot=500, seed=0).emergence(table([0.1, 0.45, 0.55, 0.97], 4000), [0.5])[0]
    assert big["ci_low"] == big["ci_high"] == 2, "with 4000 problems 0.45 and 0.55 are told apart"
    never = Bootstrap(n_boot=200, seed=0).emergence(table([0.1, 0.2], 50), [0.5])[0]
    assert math.isnan(never["layer"]) and math.isnan(never["ci_high"]) and never["reached"] == 0.0
    again = Bootstrap(n_boot=500, seed=0).emergence(table([0.1, 0.45, 0.55, 0.97], 40), [0.5, 0.9])
    assert again == rows, "the same seed gives the same interval"


def test_bootstrap_weights_resample_with_replacement():
    w = Bootstrap(n_boot=300, seed=1).weights(25)
    assert w.shape == (300, 25) and (w.sum(1) == 25).all() and (w == w.round()).all()
    assert abs(w.mean().item() - 1) < 1e-6 and (w == 0).float().mean().item() == pytest.approx((24 / 25) ** 25, abs=0.03)


def test_a_sweep_reports_emergence_per_cell_and_the_run_directory_keeps_it(native_model, tmp_path):
    grid = ld.run_sweep(native_model, scales=[1, 2], n_per_scale=30, target="answer", thresholds=[0.3, 0.6], n_boot=200)
    e = grid.emergence
    main = e[(e["place"] == "all") & (e["carries"] == "all")]
    assert set(main["threshold"]) == {0.3, 0.6} and len(main) == 2 * 2
    cells = grid.to_dataframe(breakdown=False)
    for _, row in main.iterrows():  # the point estimate is the first layer of the grid's own accuracies
        acc = cells[cells["scale"] == row["scale"]].sort_values("layer")["accuracy"].to_numpy()
        hit = [i for i, a in enumerate(acc) if a >= row["threshold"] - 1e-9]
        assert (row["layer"] == hit[0]) if hit else math.isnan(row["layer"])
    saved = grid.save(tmp_path / "run")
    back = ld.AccuracyGrid.load(saved)
    pd.testing.assert_frame_equal(back.emergence, grid.emergence, check_dtype=False)
    assert "acc >= 0.3" in emergence_text(grid.emergence)


def test_several_seeds_pool_the_draws_and_keep_each_one(native_model):
    task = TaskConfig(scales=[2], n_per_scale=20)
    grid = sweep(native_model, task, SweepConfig(targets="answer", seeds=[4, 5]))
    df = grid.to_dataframe()
    for seed in (4, 5):  # each draw's rows are exactly that draw's sweep
        alone = ld.run_sweep(native_model, scales=[2], n_per_scale=20, target="answer", seed=seed).pivot()
        rows = df[(df["seed"] == str(seed)) & (df["place"] == "all") & (df["carries"] == "all")]
        pd.testing.assert_series_equal(
            rows.set_index("layer")["accuracy"], alone.loc[2].rename("accuracy").rename_axis("layer"), check_names=False
        )
    pooled = grid.to_dataframe(breakdown=False)
    assert set(pooled["n"]) == {40}
    assert {p.seed for p in grid.problems} == {4, 5} and grid.info["sweep"]["seeds"] == [4, 5]
    text = emergence_text(grid.emergence)
    assert "seeds" in text


def test_bad_thresholds_and_seeds_are_one_line_errors():
    with pytest.raises(ld.LensDigitsError, match="thresholds"):
        SweepConfig(thresholds="0.5,1.5")
    with pytest.raises(ld.LensDigitsError, match="seeds"):
        SweepConfig(seeds="0,x")
    with pytest.raises(ld.LensDigitsError, match="within"):
        SweepConfig(within="-1")
