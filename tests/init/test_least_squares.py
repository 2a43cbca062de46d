"""The output layer's solver against references: a float64 QR reference and the SVD's rank."""

from __future__ import annotations

import pytest
import torch

from synaprune.init import least_squares

DT = torch.float64


def _relu_features(n: int, neurons: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=DT)
    w = torch.randn(neurons, 3, generator=g, dtype=DT)
    return torch.relu(x @ w[:, :2].T + w[:, 2])


def test_full_rank_solution_matches_householder_qr_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 7, generator=g, dtype=DT)
    y = torch.randn(40, 2, generator=g, dtype=DT)
    q, r = torch.linalg.qr(a)  # reference: R x = Q^T y, well conditioned here (cond ~ 3)
    reference = torch.linalg.solve_triangular(r, q.T @ y, upper=True)
    coef, rank = least_squares(a, y)
    assert rank == 7
    # Two backward-stable solvers of a problem with cond ~ 3: agreement to ~1e-15 relative.
    torch.testing.assert_close(coef, reference, rtol=1e-12, atol=1e-12)


def test_rank_is_the_numerical_rank_of_relu_features_with_dead_and_repeated_columns():
    # torch's pivoted-QR driver (gelsy) reported rank 9 for this matrix of numerical rank 58.
    g = _relu_features(100, 60, seed=3)
    ones = torch.ones(100, 1, dtype=DT)
    a = torch.cat([g, torch.zeros(100, 1, dtype=DT), g[:, :1], ones], dim=1)
    y = torch.randn(100, 1, generator=torch.Generator().manual_seed(4), dtype=DT)
    coef, rank = least_squares(a, y)
    scaled = a / torch.where(a.norm(dim=0) > 0, a.norm(dim=0), torch.ones(1, dtype=DT))
    s = torch.linalg.svdvals(scaled)
    assert rank == int((s > max(a.shape) * torch.finfo(DT).eps * s[0]).sum())
    # More columns never fit worse: compare with the fit of the first 20 columns and the bias.
    sub = torch.cat([g[:, :20], ones], dim=1)
    sub_coef, _ = least_squares(sub, y)
    assert (a @ coef - y).square().sum() <= (sub @ sub_coef - y).square().sum()
    # Optimality: the residual is orthogonal to every column (to rounding, relative to |a||y|).
    assert (a.T @ (a @ coef - y)).abs().max() < 1e-10 * a.norm() * y.norm()


def test_bad_input_is_rejected():
    a = torch.ones(3, 2, dtype=DT)
    with pytest.raises(ValueError, match="NaN"):
        least_squares(a, torch.tensor([[1.0], [float("nan")], [0.0]], dtype=DT))
    with pytest.raises(ValueError, match="size"):
        least_squares(a, torch.ones(4, 1, dtype=DT))
