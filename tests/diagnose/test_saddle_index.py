"""diagnose()'s saddle index counts repeated negative eigenvalues with their multiplicity.

Regression: the textbook saddle of Fukumizu & Amari (2000), a trained network with one hidden
unit split into three identical copies (outgoing weight shared equally), is an exact critical
point whose negative eigenvalues come in pairs (the antisymmetric combinations of the copies).
Lanczos returned one copy of a pair, and diagnose reported 3 negative eigenvalues where the
dense Hessian has 4, with no warning.

Also, against the dense spectrum: a quadratic saddle with -3 three times among 297 distinct
eigenvalues, and the saddle of identical units with zero weights (few distinct eigenvalues).
"""

from __future__ import annotations

import pytest
import torch
from cases import dense_hessian, mlp, regression
from torch import nn
from torch.nn import functional as F

from synaprune.diagnose import diagnose
from synaprune.diagnose._diagnose import NEG_EIG_TOL


class _Quadratic(nn.Module):
    """A "model" whose mean loss is 0.5 theta^T A theta, at theta = 0 (an exact critical point):
    its Hessian is A = Q diag(eigenvalues) Q^T, whatever the data."""

    def __init__(self, eigenvalues: list[float], seed: int) -> None:
        super().__init__()
        n = len(eigenvalues)
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
        self.register_buffer("a", (a + a.T) / 2)
        self.theta = nn.Parameter(torch.zeros(n, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (0.5 * self.theta @ self.a @ self.theta) * torch.ones(x.shape[0], dtype=x.dtype)


def _mean(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out.mean()


def _split_unit_saddle() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An 8-3-1 tanh MLP trained to a minimum (L-BFGS, float64), then unit 0 split into three
    identical units, each with a third of its outgoing weight: an 8-5-1 MLP with the same
    function, hence a critical point (Fukumizu & Amari 2000)."""
    x, y = regression(n=60, d=8, seed=2)
    small = mlp([8, 3, 1], nn.Tanh, seed=2)
    opt = torch.optim.LBFGS(small.parameters(), lr=1, max_iter=500, tolerance_grad=1e-14,
                            tolerance_change=1e-16, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(small(x), y)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    model = mlp([8, 5, 1], nn.Tanh)
    with torch.no_grad():
        model[0].weight[:3] = small[0].weight
        model[0].bias[:3] = small[0].bias
        model[0].weight[3:] = small[0].weight[0]
        model[0].bias[3:] = small[0].bias[0]
        model[2].weight[:, :3] = small[2].weight
        model[2].weight[:, 0] /= 3
        model[2].weight[:, 3:] = model[2].weight[:, :1]
        model[2].bias.copy_(small[2].bias)
    return model, x, y


def test_index_of_a_split_unit_saddle_counts_both_copies():
    model, x, y = _split_unit_saddle()
    ev = torch.linalg.eigvalsh(dense_hessian(model, F.mse_loss, x, y))
    cut = -NEG_EIG_TOL * float(ev.abs().max())
    # The reference: two pairs of exactly repeated negative eigenvalues below the cut, the
    # next pair above it (margins of 40% either side, so the count is not a rounding matter).
    assert float(ev[1] - ev[0]) < 1e-12 and float(ev[3] - ev[2]) < 1e-12
    assert ev[3] < 1.4 * cut and ev[4] > cut / 1.4
    diag = diagnose(model, F.mse_loss, (x, y), k=5)
    assert diag.kind == "saddle"  # a critical point (small gradient) with negative curvature
    assert diag.num_negative == 4
    assert diag.index == 4 / ev.shape[0]
    assert not diag.index_is_lower_bound


def test_index_counts_a_repeated_negative_eigenvalue_of_a_generic_spectrum():
    g = torch.Generator().manual_seed(0)
    # a bulk of distinct positive eigenvalues and distinct outliers above it (n = 300), so
    # the Krylov space does not become invariant before the extreme pairs converge
    bulk = torch.empty(289, dtype=torch.float64).uniform_(0.2, 2.0, generator=g).tolist()
    model = _Quadratic([-3.0] * 3 + bulk + [2.6, 3.1, 3.9, 4.6, 5.5, 6.3, 7.7, 9.0], seed=1)
    x = torch.zeros(8, 1, dtype=torch.float64)
    diag = diagnose(model, _mean, (x, torch.zeros(8, dtype=torch.float64)), k=5)
    assert diag.kind == "saddle"
    assert diag.num_negative == 3
    assert diag.index == 3 / 300
    assert not diag.index_is_lower_bound
    torch.testing.assert_close(torch.tensor(diag.eigenvalues_smallest[:3], dtype=torch.float64),
                               torch.full((3,), -3.0, dtype=torch.float64), rtol=1e-9, atol=0)


def _symmetric_saddle(d: int, h: int, seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    x, y = regression(n=40, d=d, seed=seed)
    model = mlp([d, h, 1], nn.Tanh)
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(0.3)
        model[2].weight.zero_()
        model[2].bias.fill_(float(y.mean()))
    return model, x, y


@pytest.mark.parametrize(("d", "h", "seed"), [(8, 4, 1), (10, 3, 1), (12, 4, 3)])
def test_index_counts_repeated_negative_eigenvalues(d, h, seed):
    model, x, y = _symmetric_saddle(d, h, seed)
    ev = torch.linalg.eigvalsh(dense_hessian(model, F.mse_loss, x, y))
    cut = -NEG_EIG_TOL * float(ev.abs().max())
    expected = int((ev < cut).sum())
    # The case is a test of multiplicity: the most negative eigenvalue is repeated h - 1 times
    # (to rounding), and fewer than k = 5 are negative, so the index is exact, not a bound.
    assert float(ev[h - 2] - ev[0]) < 1e-12 * float(ev.abs().max())
    assert 2 <= h - 1 < expected < 5
    diag = diagnose(model, F.mse_loss, (x, y), k=5)
    assert diag.kind == "saddle"
    assert diag.eigen_converged
    assert diag.num_negative == expected
    assert diag.index == expected / ev.shape[0]
    assert not diag.index_is_lower_bound
    # Each returned eigenvalue, repeats included, matches the dense spectrum (tolerance: the
    # Lanczos residual test at 1e-6 relative, with an absolute floor for the zeros).
    torch.testing.assert_close(torch.tensor(diag.eigenvalues_smallest, dtype=ev.dtype), ev[:5],
                               rtol=1e-6, atol=1e-9 * float(ev.abs().max()))


def test_index_is_a_lower_bound_when_every_returned_eigenvalue_is_negative():
    """Five identical units: the repeated eigenvalue (4 copies) and one more fill k = 5."""
    model, x, y = _symmetric_saddle(6, 5, 2)
    ev = torch.linalg.eigvalsh(dense_hessian(model, F.mse_loss, x, y))
    assert int((ev < -NEG_EIG_TOL * float(ev.abs().max())).sum()) == 5
    diag = diagnose(model, F.mse_loss, (x, y), k=5)
    assert diag.num_negative == 5
    assert diag.index_is_lower_bound
