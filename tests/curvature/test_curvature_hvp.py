"""Hessian-vector products: every method against the dense Hessian, flat and list forms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from curvature_cases import (
    DTYPE,
    PROBLEMS,
    dense_gradient,
    dense_hessian,
    flat_params,
    loss_of_flat,
)
from torch import nn

from synaprune.curvature import HVP_METHODS, HessianOperator, hvp

# F.mse_loss is differentiated forward-over-reverse through jacrev (jvp(grad) fails on it in
# torch 2.13), so every method is expected to work on every problem.
CASES = [(pid, method) for pid in PROBLEMS for method in HVP_METHODS]


@pytest.fixture(scope="module")
def dense():
    cache = {}

    def get(pid):
        if pid not in cache:
            problem = PROBLEMS[pid]()
            cache[pid] = (problem, dense_hessian(problem))
        return cache[pid]

    return get


@pytest.mark.parametrize(("pid", "method"), CASES, ids=[f"{p}-{m}" for p, m in CASES])
def test_products_match_dense_hessian(dense, pid, method):
    problem, h = dense(pid)
    op = HessianOperator(problem.model, problem.loss_fn, (problem.x, problem.y), method=method)
    assert op.dim == h.shape[0]
    assert op.dtype == DTYPE
    g = torch.Generator().manual_seed(0)
    vs = torch.randn(3, op.dim, generator=g, dtype=DTYPE)
    for v in vs:
        torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)
    # The list form gives the same numbers, parameter-shaped.
    out = op.matvec(op.unflatten(vs[0]))
    assert [t.shape for t in out] == [p.shape for p in problem.model.parameters()]
    torch.testing.assert_close(op.flatten(out), h @ vs[0], rtol=1e-10, atol=1e-12)
    assert op.num_products == 4
    # Loss and gradient of the first pass.
    torch.testing.assert_close(op.gradient(), dense_gradient(problem), rtol=1e-10, atol=1e-12)
    expected_loss = float(loss_of_flat(problem)(flat_params(problem.model)))
    assert op.loss == pytest.approx(expected_loss, rel=1e-12)


def test_methods_agree_with_each_other_on_many_vectors():
    problem = PROBLEMS["conv-ce"]()
    ops = [
        HessianOperator(problem.model, problem.loss_fn, (problem.x, problem.y), method=m)
        for m in HVP_METHODS
    ]
    v = torch.randn(ops[0].dim, 6, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    results = [torch.stack([op.matvec(col) for col in v.T]) for op in ops]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("method", HVP_METHODS)
def test_several_batches_give_the_hessian_of_the_dataset_mean_loss(dense, method):
    """Unequal batch sizes must be weighted n_b / N; the reference sees all data at once."""
    problem, h = dense("tanh-mlp-ce")
    sizes = [5, 17, 18]
    batches = list(zip(problem.x.split(sizes), problem.y.split(sizes), strict=True))
    gen = ((x, y) for x, y in batches)  # a one-shot generator works: it is read once
    op = HessianOperator(problem.model, problem.loss_fn, gen, method=method)
    assert op.num_examples == 40
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)  # read again
    torch.testing.assert_close(op.gradient(), dense_gradient(problem), rtol=1e-10, atol=1e-12)
    # An unweighted mean over batches would differ: the test can tell.
    per_batch = [
        dense_hessian(type(problem)(problem.model, problem.loss_fn, x, y)) for x, y in batches
    ]
    unweighted = sum(per_batch) / len(per_batch)
    assert (unweighted @ v - h @ v).abs().max() > 1e-4


def test_hvp_function_and_params_subset(dense):
    problem, h = dense("tanh-mlp-mse")
    params = list(problem.model.parameters())
    v_list = [torch.randn_like(p) for p in params]
    out = hvp(problem.model, problem.loss_fn, (problem.x, problem.y), v_list)
    flat_v = torch.cat([t.reshape(-1) for t in v_list])
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in out]), h @ flat_v)
    # Only the last layer: the matching diagonal block of the dense Hessian.
    last = params[2:]
    n_first = sum(p.numel() for p in params[:2])
    for method in HVP_METHODS:
        op = HessianOperator(
            problem.model, problem.loss_fn, (problem.x, problem.y), params=last, method=method
        )
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
        torch.testing.assert_close(op @ v, h[n_first:, n_first:] @ v, rtol=1e-10, atol=1e-12)


def test_parameters_the_loss_ignores_give_zero_rows():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1)).to(DTYPE)
    unused = nn.Parameter(torch.ones(4, dtype=DTYPE))
    x, y = torch.randn(6, 3, dtype=DTYPE), torch.randn(6, 1, dtype=DTYPE)
    params = [*model.parameters(), unused]
    for method in ("reuse-graph", "rebuild"):
        op = HessianOperator(model, F.mse_loss, (x, y), params=params, method=method)
        out = op.matvec([torch.ones_like(p) for p in params])
        assert torch.equal(out[-1], torch.zeros(4, dtype=DTYPE))
        assert out[0].abs().sum() > 0


def test_linear_least_squares_hessian_is_exact():
    """MSE of a linear model: H = (2 / (N * out)) [x 1]^T [x 1] block structure, by hand."""
    torch.manual_seed(6)
    model = nn.Linear(3, 1).to(DTYPE)
    x, y = torch.randn(10, 3, dtype=DTYPE), torch.randn(10, 1, dtype=DTYPE)
    xa = torch.cat([x, torch.ones(10, 1, dtype=DTYPE)], dim=1)
    expected = 2.0 / 10 * xa.T @ xa
    op = HessianOperator(model, F.mse_loss, (x, y))
    columns = torch.stack([op.matvec(e) for e in torch.eye(4, dtype=DTYPE)], dim=1)
    torch.testing.assert_close(columns, expected, rtol=1e-13, atol=1e-14)


def test_float32_parameters_give_float32_products():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    op = HessianOperator(model, F.mse_loss, (x, y))
    assert op.dtype == torch.float32
    out = op.matvec(torch.ones(op.dim, dtype=torch.float64))  # cast to the params' dtype
    assert out.dtype == torch.float32
    ref = HessianOperator(model.double(), F.mse_loss, (x.double(), y.double()))
    torch.testing.assert_close(
        out.double(), ref.matvec(torch.ones(ref.dim, dtype=DTYPE)), rtol=1e-4, atol=1e-5
    )


def test_forward_over_reverse_failure_is_reported_clearly(monkeypatch):
    """The known torch.func failure is re-raised with the way out in the message."""
    problem = PROBLEMS["tanh-mlp-mse"]()

    def broken_jacrev(*args, **kwargs):
        raise RuntimeError("ZeroTensors are immutable. Please use the materialized zero tensor")

    monkeypatch.setattr(torch.func, "jacrev", broken_jacrev)
    op = HessianOperator(
        problem.model, problem.loss_fn, (problem.x, problem.y), method="forward-over-reverse"
    )
    with pytest.raises(RuntimeError, match="reuse-graph"):
        op.matvec(torch.ones(op.dim, dtype=DTYPE))


def test_scipy_linear_operator_wraps_the_products(dense):
    scipy_linalg = pytest.importorskip("scipy.sparse.linalg")
    problem, h = dense("relu-mlp-ce")
    op = HessianOperator(problem.model, problem.loss_fn, (problem.x, problem.y))
    lo = op.to_scipy()
    vals = scipy_linalg.eigsh(lo, k=2, which="LA", tol=1e-10)[0]
    torch.testing.assert_close(
        torch.as_tensor(vals).sort().values, torch.linalg.eigvalsh(h)[-2:], rtol=1e-8, atol=0
    )
    assert op.num_products > 0
