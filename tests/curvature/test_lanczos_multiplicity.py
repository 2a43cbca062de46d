"""Lanczos counts eigenvalues with multiplicity: against torch.linalg.eigvalsh (float64).

Regression for a silent wrong answer: a single Krylov sequence sees one vector per distinct
eigenvalue, so with identical hidden units (exactly repeated eigenvalues) the old ``lanczos``
returned ``converged=True`` with copies missing (four identical tanh units: the five smallest
wrong by up to 0.54 relative; three identical units among nine: one copy of the smallest
missing, 0.18 relative).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from curvature_cases import (
    PROBLEMS,
    REPEATED_SPECTRA,
    dense_hessian,
    flat_params,
)

from synaprune.curvature import ConvergenceWarning, HessianOperator, lanczos

K = 5
WHICH = ["largest", "smallest", "both"]


def _expected(ev, which, k):
    return {"largest": ev[-k:], "smallest": ev[:k], "both": torch.cat([ev[:k], ev[-k:]])}[which]


def _check(res, expected, scale):
    # Converged pairs have relative residual <= 1e-6, so each value is within 1e-6 |theta|
    # of an eigenvalue; a missing copy would show as an O(1) relative error instead.
    assert res.converged
    torch.testing.assert_close(res.eigenvalues, expected, rtol=1e-6, atol=1e-12 * scale)


@pytest.fixture(scope="module", params=["four-identical-tanh-units", "three-identical-among-nine"])
def identical(request):
    problem = PROBLEMS[request.param]()
    return problem, torch.linalg.eigvalsh(dense_hessian(problem))


def test_identical_units_really_repeat_eigenvalues(identical):
    """The cases are a test of multiplicity only if the five smallest hold an exact repeat."""
    _, ev = identical
    gaps = (ev[1:K] - ev[: K - 1]).abs() / ev.abs().max()
    assert float(gaps.min()) < 1e-12


@pytest.mark.parametrize("block_size", [1, 2, 3])
@pytest.mark.parametrize("which", WHICH)
def test_identical_units_match_dense(identical, which, block_size):
    problem, ev = identical
    op = HessianOperator(problem.model, problem.loss_fn, (problem.x, problem.y))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = lanczos(op, K, which=which, block_size=block_size,
                      generator=torch.Generator().manual_seed(0))
    _check(res, _expected(ev, which, K), float(ev.abs().max()))


def test_symmetric_start_vector_does_not_hide_the_copies(identical):
    """v0 = the parameter vector is symmetric under the permutation of the identical units, so
    it is exactly orthogonal to every antisymmetric copy; block_size=1 still finds them (the
    multiplicity check's fresh starts are random)."""
    problem, ev = identical
    op = HessianOperator(problem.model, problem.loss_fn, (problem.x, problem.y))
    res = lanczos(op, K, which="both", block_size=1, v0=flat_params(problem.model),
                  generator=torch.Generator().manual_seed(1))
    _check(res, _expected(ev, "both", K), float(ev.abs().max()))


@pytest.mark.parametrize("block_size", [1, 2])
@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("name", list(REPEATED_SPECTRA))
def test_repeated_spectra_match_dense(name, which, block_size):
    a = REPEATED_SPECTRA[name]()
    ev = torch.linalg.eigvalsh(a)
    res = lanczos(a, K, which=which, block_size=block_size,
                  generator=torch.Generator().manual_seed(2))
    _check(res, _expected(ev, which, K), float(ev.abs().max()))


@pytest.mark.parametrize("name", list(REPEATED_SPECTRA))
def test_repeated_spectra_through_thick_restarts(name):
    a = REPEATED_SPECTRA[name]()
    ev = torch.linalg.eigvalsh(a)
    res = lanczos(a, 3, which="both", ncv=16, generator=torch.Generator().manual_seed(3))
    _check(res, _expected(ev, "both", 3), float(ev.abs().max()))
    assert res.num_products > 16  # the basis of 16 could not hold every product: restarts


def test_symmetric_diagonal_start_vector():
    """On a diagonal operator v0 = e_1 + ... (ones) is no worse than random: a start vector
    that is orthogonal to nothing still sees one copy per eigenvalue; the block sees the rest."""
    a = REPEATED_SPECTRA["diagonal-triples"]()
    ev = torch.linalg.eigvalsh(a)
    res = lanczos(a, K, which="both", v0=torch.ones(a.shape[0], dtype=a.dtype),
                  generator=torch.Generator().manual_seed(4))
    _check(res, _expected(ev, "both", K), float(ev.abs().max()))


def test_cluster_at_capacity_costs_a_check_and_raises_the_block():
    """Three copies of the top eigenvalue with a block of 2: the check adds start vectors until
    a block is larger than the copies found (3 -> a block of 4)."""
    a = REPEATED_SPECTRA["top-triple"]()
    res = lanczos(a, 3, which="largest", block_size=2, generator=torch.Generator().manual_seed(5))
    assert res.converged
    torch.testing.assert_close(res.eigenvalues, torch.full((3,), 7.0, dtype=a.dtype))
    assert res.block_size == 4


def test_maxiter_during_the_check_is_not_convergence():
    """Stopping while a fresh start is still checking for copies is reported, not accepted."""
    a = REPEATED_SPECTRA["top-triple"]()
    full = lanczos(a, 3, which="largest", block_size=2, generator=torch.Generator().manual_seed(5))
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = lanczos(a, 3, which="largest", block_size=2, maxiter=full.num_products - 1,
                      generator=torch.Generator().manual_seed(5))
    assert not res.converged
