"""The batched multinomial logistic-regression solver against scikit-learn."""

import torch

from lens_digits.optim import fit_multinomial


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
