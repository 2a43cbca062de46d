"""Lanczos against torch.linalg.eigvalsh of the dense Hessian (float64)."""

from __future__ import annotations

import warnings

import pytest
import torch
from curvature_cases import DTYPE, PROBLEMS, QuadraticSaddle, dense_hessian, mean_output

from synaprune.curvature import ConvergenceWarning, HessianOperator, lanczos

K = 3


@pytest.fixture(scope="module", params=list(PROBLEMS), ids=list(PROBLEMS))
def problem_and_hessian(request):
    problem = PROBLEMS[request.param]()
    return problem, dense_hessian(problem)


def _rel_err(got, ref):
    return float(((got - ref).abs() / ref.abs()).max())


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_extreme_eigenvalues_match_dense(problem_and_hessian, which):
    problem, h = problem_and_hessian
    ref = torch.linalg.eigvalsh(h)
    expected = {
        "largest": ref[-K:],
        "smallest": ref[:K],
        "both": torch.cat([ref[:K], ref[-K:]]),
    }[which]
    op = HessianOperator(problem.model, problem.loss_fn, (problem.x, problem.y))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = lanczos(
            op, K, which=which, return_eigenvectors=True, generator=torch.Generator().manual_seed(0)
        )
    assert res.converged
    assert res.eigenvalues.shape == expected.shape
    assert _rel_err(res.eigenvalues, expected) < 1e-6
    assert res.num_products == op.num_products <= op.dim
    # Eigenvectors: unit norm, true residual ||H v - lambda v|| within the tolerance, and the
    # reported residuals are those true residuals.
    vecs = res.eigenvectors
    assert vecs.shape == (op.dim, expected.shape[0])
    torch.testing.assert_close(vecs.norm(dim=0), torch.ones(vecs.shape[1], dtype=DTYPE))
    true_res = (h @ vecs - vecs * res.eigenvalues).norm(dim=0)
    scale = float(ref.abs().max())
    assert bool((true_res <= res.tol * res.eigenvalues.abs() + 1e-10 * scale).all())
    torch.testing.assert_close(res.residuals, true_res, rtol=0, atol=1e-9 * scale)


def test_the_problems_have_negative_curvature():
    """The table is only a test of "smallest" if its Hessians are indefinite."""
    for make in PROBLEMS.values():
        ev = torch.linalg.eigvalsh(dense_hessian(make()))
        assert ev[0] < 0 < ev[-1]


def test_thick_restart_reaches_the_same_eigenvalues(problem_and_hessian):
    problem, h = problem_and_hessian
    ref = torch.linalg.eigvalsh(h)
    op = HessianOperator(problem.model, problem.loss_fn, (problem.x, problem.y))
    res = lanczos(op, 2, which="both", ncv=12, generator=torch.Generator().manual_seed(1))
    assert res.converged
    assert _rel_err(res.eigenvalues, torch.cat([ref[:2], ref[-2:]])) < 1e-6
    # The basis of 12 vectors cannot have held every product: restarts happened.
    assert res.num_products > 12


def test_saddle_with_known_index_is_recovered():
    """A quadratic "model" with Hessian Q diag(lambda) Q^T and three negative eigenvalues."""
    negatives = torch.tensor([-3.0, -1.5, -0.4], dtype=DTYPE)
    positives = torch.linspace(0.1, 10.0, 57, dtype=DTYPE)
    eigenvalues = torch.cat([negatives, positives])
    model = QuadraticSaddle(eigenvalues, seed=3)
    x = torch.zeros(8, 1, dtype=DTYPE)
    op = HessianOperator(model, mean_output, (x, torch.zeros(8, dtype=DTYPE)))
    torch.testing.assert_close(
        torch.stack([op.matvec(e) for e in torch.eye(60, dtype=DTYPE)]), model.a
    )
    res = lanczos(op, 4, which="smallest", generator=torch.Generator().manual_seed(2))
    assert res.converged
    torch.testing.assert_close(
        res.eigenvalues, torch.tensor([-3.0, -1.5, -0.4, 0.1], dtype=DTYPE), rtol=1e-9, atol=0
    )
    index = int((res.eigenvalues < 0).sum())
    assert index == 3  # the fourth smallest is positive, so the index is exactly 3 (of 60)
    top = lanczos(op, 1, which="largest", generator=torch.Generator().manual_seed(2))
    assert top.eigenvalues.item() == pytest.approx(10.0, rel=1e-9)


def test_dense_matrix_with_repeated_eigenvalues():
    """Three distinct eigenvalues: the Krylov space is invariant after three products, so the
    copies are found only by continuing from fresh directions."""
    values = torch.tensor([-2.0] * 4 + [0.5] * 10 + [5.0] * 3, dtype=DTYPE)
    q, _ = torch.linalg.qr(
        torch.randn(17, 17, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    )
    a = q @ torch.diag(values) @ q.T
    a = (a + a.T) / 2
    res = lanczos(a, 4, which="both", generator=torch.Generator().manual_seed(4))
    assert res.converged
    torch.testing.assert_close(
        res.eigenvalues, torch.tensor([-2.0] * 4 + [0.5, 5.0, 5.0, 5.0], dtype=DTYPE)
    )


def test_warns_and_reports_when_maxiter_is_too_small():
    problem = PROBLEMS["conv-ce"]()
    op = HessianOperator(problem.model, problem.loss_fn, (problem.x, problem.y))
    with pytest.warns(ConvergenceWarning, match="did not converge in 6 products"):
        res = lanczos(op, 3, which="both", maxiter=6, generator=torch.Generator().manual_seed(0))
    assert not res.converged
    assert res.num_products == 6
    assert bool((res.residuals > res.tol * res.eigenvalues.abs()).any())


def test_custom_operator_and_start_vector():
    """Any object with dim and matvec works; a fixed v0 and generator (the other start vectors
    of the block are random) give a reproducible result."""

    class Diagonal:
        dim = 50
        dtype = DTYPE

        def __init__(self):
            self.d = torch.linspace(-1.0, 4.0, 50, dtype=DTYPE)
            self.calls = 0

        def matvec(self, v):
            self.calls += 1
            return self.d * v

    op = Diagonal()
    v0 = torch.ones(50, dtype=DTYPE)
    a = lanczos(op, 2, which="largest", v0=v0, generator=torch.Generator().manual_seed(5))
    b = lanczos(op, 2, which="largest", v0=v0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a.eigenvalues, op.d[-2:])
    assert torch.equal(a.eigenvalues, b.eigenvalues)
    assert op.calls == a.num_products + b.num_products


def test_float32_model_converges_at_its_default_tolerance():
    torch.manual_seed(8)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    op = HessianOperator(model, torch.nn.functional.mse_loss, (x, y))
    res = lanczos(op, 2, which="both", generator=torch.Generator().manual_seed(0))
    assert res.converged and res.tol == 1e-4
    ref = HessianOperator(model.double(), torch.nn.functional.mse_loss, (x.double(), y.double()))
    dense = torch.stack([ref.matvec(e) for e in torch.eye(ref.dim, dtype=DTYPE)])
    ev = torch.linalg.eigvalsh((dense + dense.T) / 2)
    assert _rel_err(res.eigenvalues, torch.cat([ev[:2], ev[-2:]])) < 1e-3


def test_zero_hessian():
    """A loss linear in the parameters: H = 0 exactly, found without dividing by zero."""
    torch.manual_seed(9)
    model = torch.nn.Linear(3, 2).to(DTYPE)
    x = torch.randn(5, 3, dtype=DTYPE)
    op = HessianOperator(model, mean_output, (x, torch.zeros(5, dtype=DTYPE)))
    assert torch.equal(op.matvec(torch.ones(op.dim, dtype=DTYPE)), torch.zeros(op.dim, dtype=DTYPE))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = lanczos(op, 2, which="both", generator=torch.Generator().manual_seed(0))
    assert res.converged
    assert torch.equal(res.eigenvalues, torch.zeros(4, dtype=DTYPE))


def test_lanczos_both_ends_when_krylov_space_fills_the_whole_space():
    """Regression: after an invariant subspace, reaching dimension n must end the iteration
    (it used to ask for one more orthogonal direction and raise)."""
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    lams = torch.tensor([0.0, 0.0, 0.0, 1e-13, 1e-4, 3e-4, 1e-2, 2e-2, 0.09, 0.2, 2.0, 4.0],
                        dtype=torch.float64)
    h = q @ torch.diag(lams) @ q.T
    h = (h + h.T) / 2
    res = lanczos(h, 5, which="both", generator=torch.Generator().manual_seed(0))
    ref = torch.linalg.eigvalsh(h)
    expected = torch.cat([ref[:5], ref[-5:]])
    assert res.converged
    torch.testing.assert_close(res.eigenvalues, expected, rtol=1e-6, atol=1e-12)
