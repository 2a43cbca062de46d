"""Regression: a repeated eigenvalue was missed, yet the result said ``converged=True``, when the
Krylov space first became invariant at the very product at which every wanted Ritz pair met the
tolerance.

Found by reverting diagnose()'s small-model fallback: on tiny networks (a linear 2-2-1 MLP, a
ReLU net with dead units) with k from both ends close to n/2, 67 of 2050 diagnoses returned a
spectrum with one copy of a repeated eigenvalue missing (an interior eigenvalue in its place).
The acceptance test read ``if not seen_invariant: done = True``, so when ``invariant`` turned True
at the same product at which the wanted pairs converged (their residuals are 0 because the space
is invariant), the iteration accepted without the fresh Krylov sequence that finds the further
copies. It now accepts there only when the space is not invariant.
"""

from __future__ import annotations

import torch

from synaprune.curvature import lanczos

DTYPE = torch.float64


def _with_spectrum(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    """A symmetric matrix Q diag(eigenvalues) Q^T with a random orthogonal Q."""
    n = len(eigenvalues)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DTYPE))
    h = q @ torch.diag(torch.tensor(eigenvalues, dtype=DTYPE)) @ q.T
    return (h + h.T) / 2


def test_repeated_extreme_eigenvalue_found_twice_both_ends():
    """n = 13, k = 2 from each end; the smallest eigenvalue -3 is double (the spectrum of a
    linear 2-3-1 MLP's Hessian on one example): the two smallest are [-3, -3]."""
    h = _with_spectrum([-3.0, -3.0, -2.6] + [0.0] * 6 + [1.9, 3.0, 3.0, 3.9])
    res = lanczos(h, 2, which="both", generator=torch.Generator().manual_seed(0))
    expected = torch.linalg.eigvalsh(h)[[0, 1, -2, -1]]
    assert res.converged
    torch.testing.assert_close(res.eigenvalues, expected, rtol=1e-6, atol=1e-10)


def test_repeated_zero_eigenvalue_when_2k_is_close_to_n():
    """n = 9, k = 4 from each end (8 of the 9 eigenvalues); 0 is a double eigenvalue."""
    h = _with_spectrum([-4.8, -4.5, 0.0, 0.0, 0.027, 0.5, 2.1, 5.1, 9.7])
    res = lanczos(h, 4, which="both", generator=torch.Generator().manual_seed(0))
    ref = torch.linalg.eigvalsh(h)
    expected = torch.cat([ref[:4], ref[-4:]])
    assert res.converged
    torch.testing.assert_close(res.eigenvalues, expected, rtol=1e-6, atol=1e-10)
