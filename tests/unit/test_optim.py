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
    whole = fit_multinomial(x, y, [0.5, 2.0], n_classes=2, max_bytes=2**30)
    assert chunks == [6]
    chunks.clear()
    default = fit_multinomial(x, y, [0.5, 2.0], n_classes=2)  # budget: the size of the features
    assert max(chunks) < 6 and sum(chunks) == 6, chunks
    chunks.clear()
    tiny = fit_multinomial(x, y, [0.5, 2.0], n_classes=2, max_bytes=1)
    assert chunks == [1] * 6
    for res in (default, tiny):
        torch.testing.assert_close(res.W, whole.W, rtol=1e-5, atol=1e-6)
        assert torch.equal(res.n_iter, whole.n_iter)
