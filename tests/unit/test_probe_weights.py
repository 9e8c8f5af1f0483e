"""A fitted probe set: its logits in standardised and raw space, choosing C on validation problems, and its files."""

import json

import pytest
import torch

from lens_digits.errors import LensDigitsError
from lens_digits.methods.probes.weights import FORMAT, ProbeWeights, best_strength, default_c_index, load_weights, save_weights


def small_weights(seed=0, *, mean=None, std=None, layers=2, places=2, d=3):
    """One group of random probes; the tens probe never saw the digits 7, 8 and 9."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(1, layers, places, d, 10, generator=gen)
    b = torch.randn(1, layers, places, 10, generator=gen)
    mean = torch.randn(1, layers, d, generator=gen) if mean is None else mean
    std = torch.rand(1, layers, d, generator=gen) + 0.5 if std is None else std
    classes = torch.ones(1, places, 10, dtype=torch.bool)
    classes[0, 1, 7:] = False
    C = torch.full((1, layers, places), 1.0, dtype=torch.float64)
    return ProbeWeights(W, b, mean, std, classes, C)


def test_logits_are_the_standardised_linear_map_and_raw_weights_agree():
    w = small_weights()
    resid = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(5))  # problem, layer, d_model
    z = w.logits(resid, 0)
    assert z.shape == (4, 2, 2, 10)
    for i in range(4):
        for layer in range(2):
            x = (resid[i, layer] - w.mean[0, layer]) / w.std[0, layer]
            for place in range(2):
                want = x @ w.W[0, layer, place] + w.b[0, layer, place]
                allowed = w.classes[0, place]
                torch.testing.assert_close(z[i, layer, place][allowed], want[allowed], atol=1e-5, rtol=1e-5)
                assert (z[i, layer, place][~allowed] < -1e20).all(), "a digit the probe never saw is never predicted"
    assert (z[:, :, 1].argmax(-1) < 7).all()
    w_raw, b_raw = w.raw()
    raw = torch.einsum("nld,lpdk->nlpk", resid, w_raw[0]) + b_raw[0]
    allowed = w.classes[0][None, None].expand_as(raw)
    torch.testing.assert_close(raw[allowed], z[allowed], atol=1e-4, rtol=1e-4)


def test_default_c_is_the_one_nearest_1_on_a_log_scale():
    assert default_c_index([0.01, 0.1, 1.0, 10.0]) == 2
    assert default_c_index([0.25, 3.0]) == 1  # |log 3| < |log 0.25|
    assert default_c_index([5.0]) == 0


def _val_accuracy_and_cross_entropy(W, b, feats, labels):
    z = torch.einsum("nld,lcpdk->nlcpk", feats, W) + b[None]
    target = labels[:, None, None, :].expand(-1, *z.shape[1:4])
    ce = torch.nn.functional.cross_entropy(z.permute(0, 4, 1, 2, 3), target, reduction="none").mean(0)
    return (z.argmax(-1) == target).float().mean(0), ce


def test_best_strength_takes_the_lowest_validation_cross_entropy_and_the_smaller_c_on_ties():
    labels = torch.arange(10).repeat(3)[:, None]  # (problem, place): every digit three times
    feats = torch.nn.functional.one_hot(labels[:, 0], 10).float()[:, None, :].expand(-1, 3, -1).contiguous()  # (problem, layer, d)
    eye, shifted = torch.eye(10), torch.eye(10).roll(1, dims=1)  # reads the digit; reads it as the next digit (always wrong)
    sure_but_one_wrong = 6 * eye
    sure_but_one_wrong[0] = 0
    sure_but_one_wrong[0, 1] = 0.5  # digit 0 is read as 1
    W = torch.stack(
        [
            torch.stack([shifted, eye, 5 * eye]),  # layer 0: C0 wrong; C1 and C2 right, C2 surer: C2
            torch.stack([0.5 * eye, eye, 5 * shifted]),  # layer 1: C0 and C1 right, C1 surer; C2 confidently wrong: C1
            # layer 2: C1 is right on every problem but barely (accuracy 1); C0 is right on 9 of 10 digits and sure of
            # them (accuracy 0.9): the lower cross-entropy wins whatever the accuracy (C0)
            torch.stack([sure_but_one_wrong, 0.01 * eye, eye.roll(3, dims=1)]),
        ]
    )[:, :, None]  # (layer, c, place, d, digit)
    b = torch.zeros(3, 3, 1, 10)
    acc, ce = (x[..., 0] for x in _val_accuracy_and_cross_entropy(W, b, feats, labels))  # (layer, c)
    assert ce[0].argmin() == 2 and ce[1].argmin() == 1
    assert acc[2, 0] == 0.9 and acc[2, 1] == 1 and ce[2, 0] < ce[2, 1]
    args = (torch.zeros(3, 10), torch.ones(3, 10), torch.ones(1, 10, dtype=torch.bool), feats, labels)
    assert best_strength(W, b, *args).tolist() == [[2], [1], [0]]
    # a C whose cross-entropy is the best's within float32 noise ties with it, and the smaller C wins
    W_tie = W.clone()
    W_tie[0, 1] = W[0, 2] * (1 - 1e-7)
    assert best_strength(W_tie, b, *args)[0].tolist() == [1]
    assert best_strength(W_tie, b, *(a * (1 + 1e-7) if a.is_floating_point() else a for a in args))[0].tolist() == [1]


def test_files_round_trip_and_other_formats_are_refused(tmp_path):
    w = small_weights(0)
    control = small_weights(1, mean=w.mean, std=w.std)  # fitted on the same residuals: the same standardisation
    folder = save_weights(tmp_path / "probe", w, control, {"scope": "per_scale"})
    assert sorted(p.name for p in folder.iterdir()) == ["probe.json", "probe.safetensors"]
    meta = json.loads((folder / "probe.json").read_text())
    assert meta == {"format": FORMAT, "scope": "per_scale"}
    back, back_control, back_meta = load_weights(folder)
    for name in ("W", "b", "mean", "std", "classes", "C"):
        assert torch.equal(getattr(back, name), getattr(w, name)), name
        assert torch.equal(getattr(back_control, name), getattr(control, name)), name
    assert back_meta == meta
    assert load_weights(save_weights(tmp_path / "alone", w, None, {}))[1] is None
    (folder / "probe.json").write_text(json.dumps({"format": "lens_digits.probe/1"}))
    with pytest.raises(LensDigitsError, match="earlier shuffled-label control"):
        load_weights(folder)
    with pytest.raises(LensDigitsError, match="not a saved probe"):
        load_weights(tmp_path)
