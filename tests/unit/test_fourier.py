"""Spectral energy shares against numpy.fft, and the candidate number tokens of the three tokenizer kinds."""

import math

import numpy as np
import pytest
import torch

from lens_digits.errors import LensDigitsError
from lens_digits.methods.lenses.fourier import energy_shares, number_tokens


def numpy_shares(x, periods):
    """Energy per period from numpy.fft: |X_k|^2 summed over the k with N / min(k, N - k) == T, over all k != 0."""
    power = np.abs(np.fft.fft(x, axis=-1)) ** 2
    n = x.shape[-1]
    period = np.array([np.inf] + [n / min(k, n - k) for k in range(1, n)])
    total = power[:, 1:].sum(-1)
    cols = [power[:, np.isclose(period, t)].sum(-1) / total for t in periods]
    return np.stack(cols + [1 - sum(cols)], axis=1)


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_shares_equal_numpy_fft(n):
    x = np.random.default_rng(n).normal(size=(6, n))
    periods = (2, 2.5, 5, 10)
    ours = energy_shares(torch.tensor(x), periods).numpy()
    np.testing.assert_allclose(ours, numpy_shares(x, periods), rtol=1e-9, atol=1e-12)
    assert np.allclose(ours.sum(1), 1.0)


def test_pure_waves_land_on_their_period_and_a_constant_shift_changes_nothing():
    t = torch.arange(10, dtype=torch.float64)
    waves = torch.stack([torch.cos(2 * math.pi * t / p + 0.3) for p in (2, 2.5, 5, 10)])
    shares = energy_shares(waves + 7.0, (2, 2.5, 5, 10))
    assert torch.allclose(shares[:, :4], torch.eye(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(shares[:, 4], torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert energy_shares(torch.ones(1, 10), (2,)).isnan().all()  # no energy: undefined, never 0
    assert energy_shares(waves, (3,))[:, 0].eq(0).all()  # no frequency of period 3 among ten numbers


def test_candidate_numbers_follow_the_tokenizer(char_tok, chunk_tok, bpe_tok):
    digits = number_tokens(char_tok)
    assert [char_tok.decode([i]) for i in digits] == [str(d) for d in range(10)]
    chunks = number_tokens(chunk_tok)
    assert len(chunks) == 1000 and chunk_tok.decode([chunks[417]]) == "417"
    merged = number_tokens(bpe_tok)
    assert len(merged) in (10, 100) and all(bpe_tok.decode([i]) == str(v) for v, i in enumerate(merged))
    with pytest.raises(LensDigitsError, match="single token"):
        number_tokens(char_tok, space=True)
