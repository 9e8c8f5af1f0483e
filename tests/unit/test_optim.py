"""The batched multinomial logistic-regression solver against scikit-learn."""

import torch

from lens_digits.methods.probes.optim import fit_multinomial


def test_solver_matches_sklearn_objective():
    from sklearn.linear_model import LogisticRegression

    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 10, (2, 300, 1), generator=gen)
    x = torch.randn(2, 300, 12, generator=gen) + 0.8 * torch.randn(2, 10, 12, generator=gen).gather(1, y.expand(-1, -1, 12))
    x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True, correction=0)
    res = fit_multinomial(x, y, [0.1, 1.0], max_iter=300, tol=1e-5)
    for block in range(2):
        for ci, c in enumerate([0.1, 1.0]):
            sk = LogisticRegression(C=c, max_iter=1000, tol=1e-7).fit(x[block].double().numpy(), y[block, :, 0].numpy())
            w = torch.from_numpy(sk.coef_.T).float()
            b = torch.from_numpy(sk.intercept_).float()
            assert torch.allclose(res.W[block, ci, 0], w, atol=2e-3 * max(1.0, float(w.abs().max())))
            assert torch.allclose(res.b[block, ci, 0], b - b.mean(), atol=2e-3 * max(1.0, float(b.abs().max())))


def test_a_working_memory_budget_solves_in_chunks_with_the_same_result(monkeypatch):
    from lens_digits.methods.probes import optim

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 80, 5, generator=gen)
    y = (x[..., :2].sum(-1, keepdim=True) > 0).long().expand(-1, -1, 2).contiguous()
    chunks = []
    real = optim._solve_chunk

    def spy(x, *args, **kwargs):
        chunks.append(x.shape[0])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(optim, "_solve_chunk", spy)
    whole = fit_multinomial(x, y, [0.5, 2.0], n_classes=2)  # small features: the default budget holds every block
    assert chunks == [6, 6]  # one solve per C, the second starting where the first stopped
    chunks.clear()
    some = fit_multinomial(x, y, [0.5, 2.0], n_classes=2, max_bytes=40_000)
    assert 1 < max(chunks) < 6 and sum(chunks) == 12, chunks
    chunks.clear()
    tiny = fit_multinomial(x, y, [0.5, 2.0], n_classes=2, max_bytes=1)
    assert chunks == [1] * 12
    for res in (some, tiny):
        torch.testing.assert_close(res.W, whole.W, rtol=1e-5, atol=1e-6)
        assert torch.equal(res.n_iter, whole.n_iter)


def _objective(x, y, w_, b_, c):
    """scikit-learn's multinomial objective (float64) at weights ``w_`` and intercepts ``b_``."""
    z = x.double() @ w_.double() + b_.double()
    return float(torch.nn.functional.cross_entropy(z, y, reduction="mean") + (w_.double() ** 2).sum() / (2 * c * len(y)))


def test_correlated_features_reach_sklearn_optimum_turned_or_not(monkeypatch):
    from sklearn.linear_model import LogisticRegression

    from lens_digits.methods.probes import rows

    gen = torch.Generator().manual_seed(3)
    y = torch.randint(0, 5, (1, 240, 1), generator=gen)
    z = torch.randn(1, 240, 16, generator=gen) + 1.5 * torch.randn(1, 5, 16, generator=gen).gather(1, y.expand(-1, -1, 16))
    mix = torch.randn(16, 16, generator=gen) * torch.logspace(0, -2.5, 16)[None, :]  # a residual stream's strong correlations
    x = z @ mix.T
    x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True, correction=0)
    turned = fit_multinomial(x, y, [3.0], n_classes=5, max_iter=2000, tol=1e-6)
    monkeypatch.setattr(rows, "PRECONDITION_MAX_DIM", 1)  # the path wide features take: no turn, gamma I
    plain = fit_multinomial(x, y, [3.0], n_classes=5, max_iter=2000, tol=1e-6)
    sk = LogisticRegression(C=3.0, max_iter=5000, tol=1e-9).fit(x[0].double().numpy(), y[0, :, 0].numpy())
    best = _objective(x[0], y[0, :, 0], torch.from_numpy(sk.coef_.T), torch.from_numpy(sk.intercept_), 3.0)
    for res in (turned, plain):
        f = _objective(x[0], y[0, :, 0], res.W[0, 0, 0], res.b[0, 0, 0], 3.0)
        assert f <= best * (1 + 1e-5), (f, best)
    torch.testing.assert_close(turned.W, plain.W, rtol=0, atol=2e-2 * float(plain.W.abs().max()))


def test_trailing_rows_of_weight_zero_are_left_out(monkeypatch):
    from lens_digits.methods.probes import optim

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 90, 6, generator=gen)
    y = (x[..., :2].sum(-1, keepdim=True) > 0).long()
    sw = torch.ones(2, 90)
    sw[0, 50:] = 0  # block 0: a smaller group padded to block 1's length
    x[0, 50:] = 1e6  # whatever padding holds never enters the fit
    lengths = []
    real = optim._solve_chunk

    def spy(x, *args, **kwargs):
        lengths.append(tuple(x.shape[:2]))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(optim, "_solve_chunk", spy)
    both = fit_multinomial(x, y, [1.0], sample_weight=sw, n_classes=2, tol=1e-6)
    assert sorted(lengths) == [(1, 50), (1, 90)]
    alone = fit_multinomial(x[:1, :50], y[:1, :50], [1.0], n_classes=2, tol=1e-6)
    torch.testing.assert_close(both.W[:1], alone.W)
    torch.testing.assert_close(both.b[:1], alone.b)
    assert torch.isfinite(both.W).all()


def test_strengths_in_any_order_give_the_fits_of_each_alone():
    gen = torch.Generator().manual_seed(5)
    y = torch.randint(0, 4, (3, 120, 2), generator=gen)
    x = torch.randn(3, 120, 8, generator=gen) + torch.randn(3, 4, 8, generator=gen).gather(1, y[..., :1].expand(-1, -1, 8))
    together = fit_multinomial(x, y, [10.0, 0.05, 1.0], n_classes=4, max_iter=1000, tol=1e-6)  # solved 0.05, 1, 10: warm starts
    for i, c in enumerate([10.0, 0.05, 1.0]):
        alone = fit_multinomial(x, y, [c], n_classes=4, max_iter=1000, tol=1e-6)
        torch.testing.assert_close(together.W[:, i], alone.W[:, 0], rtol=0, atol=2e-3 * max(1.0, float(alone.W.abs().max())))


def test_running_fits_are_laid_out_in_rows_of_one_block_each():
    from lens_digits.methods.probes.rows import layout

    gen = torch.Generator().manual_seed(6)
    for _ in range(20):
        n_blocks, n_cells = int(torch.randint(1, 12, (1,), generator=gen)), int(torch.randint(1, 40, (1,), generator=gen))
        running = torch.rand(n_blocks, n_cells, generator=gen) < float(torch.rand(1, generator=gen))
        if not running.any():
            continue
        block, cell = running.nonzero(as_tuple=True)
        bi, ci, pad, src = layout(block, cell, n_blocks)
        assert bi.numel() <= n_blocks  # never more rows (feature copies) than the blocks it started with
        held = sorted((int(bi[r]), int(ci[r, s])) for r, s in (~pad).nonzero().tolist())
        assert held == sorted(zip(block.tolist(), cell.tolist(), strict=True))  # every running fit exactly once
        assert torch.equal(block[src], bi[:, None].expand_as(src))  # a slot holds a fit of its row's block
        assert torch.equal(ci[~pad], cell[src[~pad]])
