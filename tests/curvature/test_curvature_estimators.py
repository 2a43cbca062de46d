"""Hutchinson's trace, stochastic Lanczos quadrature and the curvature along the gradient,
against the dense Hessian."""

from __future__ import annotations

import math

import pytest
import torch
from curvature_cases import DTYPE, PROBLEMS, dense_gradient, dense_hessian

from synaprune.curvature import (
    HessianOperator,
    gaussian_density,
    gradient_curvature,
    hutchinson_trace,
    spectral_density,
)


@pytest.fixture(scope="module")
def tanh_ce():
    problem = PROBLEMS["tanh-mlp-ce"]()
    return problem, dense_hessian(problem)


def _op(problem):
    return HessianOperator(problem.model, problem.loss_fn, (problem.x, problem.y))


def test_hutchinson_within_its_standard_error_of_the_dense_trace(tanh_ce):
    problem, h = tanh_ce
    op = _op(problem)
    est = hutchinson_trace(op, 2000, generator=torch.Generator().manual_seed(0))
    trace = float(torch.trace(h))
    assert est.num_products == op.num_products == 2000
    assert est.samples.shape == (2000,)
    assert abs(est.estimate - trace) <= 3 * est.std_error
    # The standard error is the right size: Var(z^T H z) = 2 * sum_{i != j} H_ij^2.
    off = h - torch.diag(torch.diag(h))
    expected_se = math.sqrt(2 * float((off**2).sum()) / 2000)
    assert 0.85 < est.std_error / expected_se < 1.15
    # ... and small enough for the test to mean something.
    assert est.std_error < 0.05 * abs(trace)


def test_hutchinson_is_reproducible_and_exact_on_a_diagonal():
    d = torch.diag(torch.arange(1.0, 21.0, dtype=DTYPE))
    est = hutchinson_trace(d, 5)
    assert est.estimate == 210.0 and est.std_error == 0.0
    problem = PROBLEMS["conv-ce"]()
    a = hutchinson_trace(_op(problem), 7, generator=torch.Generator().manual_seed(3))
    b = hutchinson_trace(_op(problem), 7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.samples, b.samples)


def test_slq_weights_sum_to_one_and_mean_estimates_trace_over_n(tanh_ce):
    problem, h = tanh_ce
    n = h.shape[0]
    op = _op(problem)
    sd = spectral_density(
        op, num_probes=40, num_steps=20, generator=torch.Generator().manual_seed(5)
    )
    assert sd.nodes.shape == sd.weights.shape == (40 * 20,)
    assert sd.num_products == op.num_products == 800
    assert float(sd.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    assert bool((sd.weights >= 0).all())
    # With the same probes, SLQ's mean is Hutchinson's estimate divided by n, exactly.
    hutch = hutchinson_trace(op, 40, generator=torch.Generator().manual_seed(5))
    assert sd.mean == pytest.approx(hutch.estimate / n, rel=1e-10)
    assert abs(sd.mean - float(torch.trace(h)) / n) <= 3 * hutch.std_error / n
    # Nodes lie inside the spectrum (Ritz values of a symmetric matrix).
    ev = torch.linalg.eigvalsh(h)
    assert ev[0] - 1e-10 <= sd.nodes.min() and sd.nodes.max() <= ev[-1] + 1e-10


def test_slq_with_a_full_krylov_space_is_exact_quadrature(tanh_ce):
    """num_steps = n: the nodes are eigenvalues, and the quadrature is exact for polynomials:
    sum_j w_j theta_j^2 = mean over the probes of z^T H^2 z / n."""
    problem, h = tanh_ce
    ev = torch.linalg.eigvalsh(h)
    n = ev.shape[0]
    sd = spectral_density(
        _op(problem), num_probes=2, num_steps=n, generator=torch.Generator().manual_seed(6)
    )
    # A probe stops early once its Krylov space is invariant to rounding (what is left has
    # weight ~1e-20), so there are at most 2n nodes, each an eigenvalue, the extremes included.
    assert n < sd.nodes.shape[0] <= 2 * n
    scale = float(ev.abs().max())
    distance = (sd.nodes[:, None] - ev[None, :]).abs().min(dim=1).values
    assert float(distance.max()) < 1e-9 * scale
    torch.testing.assert_close(sd.nodes.min(), ev[0], rtol=0, atol=1e-9 * scale)
    torch.testing.assert_close(sd.nodes.max(), ev[-1], rtol=0, atol=1e-9 * scale)
    same_probes = hutchinson_trace(h @ h, 2, generator=torch.Generator().manual_seed(6))
    m2 = float(sd.weights @ sd.nodes**2)
    assert m2 == pytest.approx(same_probes.estimate / n, rel=1e-9)


def test_gaussian_density_integrates_to_the_weights():
    nodes = torch.tensor([-1.0, 0.0, 2.0], dtype=DTYPE)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=DTYPE)
    grid = torch.linspace(-6, 7, 4001, dtype=DTYPE)
    dens = gaussian_density(nodes, weights, grid, sigma=0.3)
    integral = float(torch.trapezoid(dens, grid))
    assert integral == pytest.approx(1.0, abs=1e-8)
    # The peak at 0 (weight 0.5) is the tallest, and the value there is analytic.
    at_zero = float(gaussian_density(nodes, weights, torch.zeros(1, dtype=DTYPE), 0.3))
    expected = sum(
        w * math.exp(-0.5 * (t / 0.3) ** 2) / (0.3 * math.sqrt(2 * math.pi))
        for t, w in zip(nodes.tolist(), weights.tolist(), strict=True)
    )
    assert at_zero == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("pid", list(PROBLEMS))
def test_gradient_curvature_matches_dense(pid):
    problem = PROBLEMS[pid]()
    h, g = dense_hessian(problem), dense_gradient(problem)
    op = _op(problem)
    gc = gradient_curvature(op)
    assert gc.ghg == pytest.approx(float(g @ h @ g), rel=1e-10)
    assert gc.gg == pytest.approx(float(g @ g), rel=1e-12)
    assert gc.curvature == pytest.approx(float(g @ h @ g) / float(g @ g), rel=1e-10)
    assert gc.num_products == op.num_products == 1
    # The Rayleigh quotient lies within the spectrum.
    ev = torch.linalg.eigvalsh(h)
    assert float(ev[0]) <= gc.curvature <= float(ev[-1])


def test_gradient_curvature_step_rule_and_zero_gradient():
    a = torch.diag(torch.tensor([1.0, 3.0], dtype=DTYPE))
    gc = gradient_curvature(a, torch.tensor([1.0, 1.0], dtype=DTYPE))
    assert (gc.curvature, gc.ghg, gc.gg) == (2.0, 4.0, 2.0)
    assert gc.max_stable_step() == 1.0
    # On the quadratic 0.5 theta^T A theta with gradient g = A theta, a step of -eps g raises
    # the loss exactly when eps > 2 g^T g / g^T A g.
    theta = torch.tensor([1.0, 1.0], dtype=DTYPE) @ torch.linalg.inv(a)
    g = a @ theta
    gc = gradient_curvature(a, g)

    def loss(t):
        return float(0.5 * t @ a @ t)

    eps = gc.max_stable_step()
    assert loss(theta - 0.99 * eps * g) < loss(theta) < loss(theta - 1.01 * eps * g)
    zero = gradient_curvature(a, torch.zeros(2, dtype=DTYPE))
    assert math.isnan(zero.curvature) and zero.gg == 0.0 and zero.max_stable_step() == math.inf
