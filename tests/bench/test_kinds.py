"""How a run ended: constructed cases built to break the classification.

A tilted double well in w0 plus a quadratic in w1,

    L(w) = (w0^2 - 1)^2 + 0.3 w0 + c w1^2 + OFFSET,

has its global minimum near w0 = -1.04, a spurious minimum near w0 = +0.96 and a saddle (a
maximum in w0) near w0 = 0.075, each with w1 = 0; every point and curvature is known in closed
form up to a Newton solve of L'(w0) = 0 in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from synaprune.bench import get_method, run_seeds, run_single
from synaprune.bench.kinds import (
    DIVERGED_FACTOR,
    KINDS,
    NEG_EIG_TOL,
    REL_GRAD_TOL,
    classify,
    divergence_bound,
    gradient_threshold,
    hessian_extremes,
    is_unstable,
    kind_label,
)
from synaprune.bench.summary import summarize
from synaprune.optim.presets import ESCAPE
from synaprune.problems import Problem, get_problem

TILT = 0.3


def _d1(x: float) -> float:
    return 4 * x * (x * x - 1) + TILT


def _d2(x: float) -> float:
    return 12 * x * x - 4


def _root(x: float) -> float:
    for _ in range(60):
        x -= _d1(x) / _d2(x)
    return x


W_GLOBAL, W_SPURIOUS, W_SADDLE = _root(-1.0), _root(1.0), _root(0.0)


def _f0(x: float) -> float:
    return (x * x - 1) ** 2 + TILT * x


def well_problem(start: tuple[float, float], c: float = 1.0, offset: float = 0.0,
                 tolerance: float = 1e-6) -> Problem:
    """The double well, every seed starting at ``start`` (the seed plays no part)."""

    class _Model(nn.Module):
        def __init__(self, generator: torch.Generator) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor(start, dtype=torch.float64))

    def loss(pb):
        w = pb["w"]
        return (w[0] ** 2 - 1) ** 2 + TILT * w[0] + c * w[1] ** 2 + offset

    return Problem(name="well", options={}, global_loss=_f0(W_GLOBAL) + offset,
                   tolerance=tolerance, per_example=False, description="test",
                   _make_model=_Model, _exact_loss=loss)


def quadratic_problem(start: tuple[float, float], curvatures: tuple[float, float],
                      offset: float = 0.0) -> Problem:
    """L = offset + sum_i curvatures[i] w_i^2 / 2, global loss ``offset``, tolerance 1e-6."""

    class _Model(nn.Module):
        def __init__(self, generator: torch.Generator) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor(start, dtype=torch.float64))

    h = torch.tensor(curvatures, dtype=torch.float64)
    return Problem(name="quadratic", options={}, global_loss=offset, tolerance=1e-6,
                   per_example=False, description="test", _make_model=_Model,
                   _exact_loss=lambda pb: offset + (h * pb["w"] ** 2).sum() / 2)


def test_saddle_with_a_tiny_gradient_is_a_saddle_not_a_spurious_minimum() -> None:
    """Started on the saddle: gradient ~1e-16, far below any tolerance, loss far above the
    global one, so only the Hessian can tell. Index 1, min eig = L''(w0) < 0."""
    problem = well_problem((W_SADDLE, 0.0))
    (run,) = run_seeds(problem, get_method("gd:lr=0.01"), [0], 0)
    assert run.status == "budget" and run.final_grad_norm < 1e-14
    assert run.kind == "saddle" and run.saddle_index == 1
    assert run.min_eig == pytest.approx(_d2(W_SADDLE), rel=1e-6)  # Lanczos tolerance 1e-6


def test_weak_negative_curvature_against_a_stiff_direction_is_still_a_saddle() -> None:
    """max|eig| = 2c = 1000 and min eig ~ -3.9: the ratio 3.9e-3 is above NEG_EIG_TOL = 1e-3,
    so it is negative curvature, not a flat direction."""
    problem = well_problem((W_SADDLE, 0.0), c=500.0)
    (run,) = run_seeds(problem, get_method("gd:lr=0.01"), [0], 0)
    assert abs(_d2(W_SADDLE)) / 1000.0 > NEG_EIG_TOL
    assert run.kind == "saddle" and run.saddle_index == 1


def test_converged_run_in_the_upper_well_is_a_spurious_minimum() -> None:
    problem = well_problem((1.3, 0.5))
    (run,) = run_seeds(problem, get_method("gd:lr=0.05"), [0], 5000, until_converged=True)
    assert run.steps < 5000 and run.kind == "spurious" and run.saddle_index == 0
    assert run.min_eig == pytest.approx(min(_d2(W_SPURIOUS), 2.0), rel=1e-5)
    assert run.final_loss == pytest.approx(_f0(W_SPURIOUS), abs=1e-12)


def test_run_still_descending_towards_the_spurious_minimum_is_moving() -> None:
    """A tiny step: 50 steps leave the gradient large; the Hessian is not even looked at."""
    problem = well_problem((1.5, 0.5))
    (run,) = run_seeds(problem, get_method("gd:lr=1e-4"), [0], 50)
    assert run.kind == "moving" and run.min_eig is None and run.saddle_index is None


def test_small_gradient_that_can_still_reach_the_global_loss_is_moving() -> None:
    """A loose absolute tolerance passes the gradient test next to the global minimum of a
    quadratic: to second order the loss can still fall by ||g||^2 / (2 lambda_min) >= L - L*,
    so the point is no spurious minimum."""
    problem = quadratic_problem((0.02, 0.01), (4.0, 1.0))
    run = run_single(problem, get_method("gd:lr=1e-6"), 0, 1, grad_tol=1.0)
    assert run.final_grad_norm < 1.0 and not run.success
    assert run.kind == "moving" and run.min_eig == pytest.approx(1.0, rel=1e-6)
    # The same point with a tolerance that calls it not small: moving without a Hessian.
    again = run_single(problem, get_method("gd:lr=1e-6"), 0, 1)
    assert again.kind == "moving" and again.min_eig is None


def test_global_run_is_never_tested_as_a_minimum() -> None:
    problem = well_problem((-1.2, 0.1))
    (run,) = run_seeds(problem, get_method("gd:lr=0.05"), [0], 5000)
    assert run.success and run.kind == "global" and run.min_eig is None


def test_step_above_two_over_lambda_is_unstable_and_a_diverged_run_is_diverged() -> None:
    """lr * lambda = 2.04 on one axis: |1 - 2.04| = 1.04, the loss climbs ~8 % a step but
    stays finite for 100 steps (unstable); lr * lambda = 40 overflows to inf (diverged)."""
    problem = quadratic_problem((0.0, 1.0), (1.0, 2.0), offset=1.0)
    (run,) = run_seeds(problem, get_method("gd:lr=1.02"), [0], 100)
    assert math.isfinite(run.final_loss) and run.final_loss > 100
    assert run.kind == "unstable" and run.min_eig is None
    (blown,) = run_seeds(problem, get_method("gd:lr=20"), [0], 500)
    assert blown.status == "diverged" and blown.kind == "diverged"


def test_a_finite_blow_up_is_diverged_not_moving() -> None:
    """lr * lambda = 3 on one axis: the excess loss grows 4x a step and would take ~500 steps to
    overflow float64. It passes a million times its start (L_0 - L* = 1) at step 10, 4^10: both
    runners stop it there as diverged, at that finite loss, before any Hessian check."""
    problem = quadratic_problem((0.0, 1.0), (1.0, 2.0), offset=1.0)
    assert divergence_bound(problem, 2.0) == 1.0 + DIVERGED_FACTOR
    first = next(t for t in range(100) if 4.0 ** t > DIVERGED_FACTOR)
    method = get_method("gd:lr=1.5")
    (stacked,) = run_seeds(problem, method, [0], 100, until_converged=True)
    single = run_single(problem, method, 0, 100, until_converged=True)
    for run in (stacked, single):
        assert run.status == "diverged" and run.kind == "diverged" and not run.success
        assert run.steps == first and run.min_eig is None and run.final_grad_norm is None
        assert run.final_loss == pytest.approx(1.0 + 4.0 ** first, rel=1e-12)
    summary, = summarize([{"problem": "q", "method": "gd", "budget": 100, "success": False,
                           "status": stacked.status, "final_loss": stacked.final_loss,
                           "steps_to_success": None, "wall_time": 0.0,
                           "kind": stacked.kind}])
    assert summary.diverged == 1 and summary.median_final_loss == math.inf


def test_divergence_bound_is_relative_to_the_starting_excess() -> None:
    problem = quadratic_problem((0.0, 1.0), (1.0, 2.0), offset=1.0)
    starts = torch.tensor([2.0, 1.0, 5.0, math.nan], dtype=torch.float64)
    bounds = divergence_bound(problem, starts)
    # a start at the global loss: the tolerance stands in for the excess
    expected = [1 + DIVERGED_FACTOR, 1 + DIVERGED_FACTOR * 1e-6, 1 + 4 * DIVERGED_FACTOR]
    assert bounds[:3].tolist() == pytest.approx(expected, rel=1e-15)
    assert math.isnan(bounds[3])
    assert [divergence_bound(problem, float(v)) for v in starts[:3]] == pytest.approx(expected)


def test_issue_case_gd_above_two_over_lambda_max_at_teacher_student_k14_is_unstable() -> None:
    """gd:lr=0.5 at k = 14 (issue 9: 0/300 successes, median loss 1.57, nothing said why): the
    loss bounces between levels, rising about as much as it falls; the runner sums the rises
    at every step, so the downsampled curve's spacing cannot hide them."""
    problem = get_problem("teacher-student:k=14")
    runs = run_seeds(problem, get_method("gd:lr=0.5"), [0], 500)
    for run in runs:
        assert not run.success and run.final_grad_norm > 1.0
        assert run.kind == "unstable"
        assert run.tail_rise > 10 * abs(run.tail_start - run.final_loss)


def test_is_unstable_rule() -> None:
    problem = quadratic_problem((0.0, 0.0), (1.0, 1.0), offset=1.0)
    assert not is_unstable(problem, 1.5, None, 10.0)  # stopped before the second half
    assert not is_unstable(problem, 1.5, 2.0, 0.0)  # monotone descent
    assert not is_unstable(problem, 1.5, 2.0, 0.4)  # rose 0.4, fell 0.5 net: still moving
    assert is_unstable(problem, 1.9, 2.0, 0.4)  # rose 0.4, fell 0.1 net
    assert is_unstable(problem, 2.5, 2.0, 0.5)  # climbed
    assert not is_unstable(problem, 2.0, 2.0, 1e-15)  # rounding


def test_gradient_threshold_is_relative_to_the_excess_and_parameters() -> None:
    problem = quadratic_problem((0.0, 0.0), (1.0, 1.0), offset=1.0)
    assert gradient_threshold(problem, 1.5, 4.0) == pytest.approx(REL_GRAD_TOL * 0.5 / 4.0)
    # Parameter norms below 1 and excesses below the tolerance are floored.
    assert gradient_threshold(problem, 1.0 + 1e-9, 0.1) == pytest.approx(REL_GRAD_TOL * 1e-6)
    assert gradient_threshold(problem, 1.5, 4.0, grad_tol=1e-8) == 1e-8
    losses = torch.tensor([1.5, 3.0], dtype=torch.float64)
    got = gradient_threshold(problem, losses, torch.tensor([4.0, 0.5], dtype=torch.float64))
    assert torch.allclose(got, torch.tensor([REL_GRAD_TOL * 0.5 / 4, REL_GRAD_TOL * 2.0],
                                            dtype=torch.float64), rtol=1e-15)


def test_hessian_extremes_counts_every_negative_eigenvalue_against_a_dense_hessian() -> None:
    """Teacher-student at a random point: Lanczos's smallest eigenvalues and its count of
    negatives against eigvalsh of the dense float64 Hessian (torch.func.hessian)."""
    problem = get_problem("teacher-student:k=4")
    model = problem.build_model(3)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    w = params["hidden.weight"]

    def f(flat: torch.Tensor) -> torch.Tensor:
        return problem.exact_loss_fn({**buffers, "hidden.weight": flat.view_as(w)})

    dense = torch.linalg.eigvalsh(torch.func.hessian(f)(w.reshape(-1)))
    smallest, largest, negative, hvps = hessian_extremes(problem, params, seed=3)
    assert list(params) == ["hidden.weight"]  # the only trained tensor: the check is complete
    cut = -NEG_EIG_TOL * float(dense.abs().max())
    assert negative == int((dense < cut).sum())
    assert torch.allclose(torch.tensor(smallest, dtype=torch.float64), dense[:len(smallest)],
                          rtol=1e-6, atol=1e-9)
    assert largest == pytest.approx(float(dense[-1]), rel=1e-6)
    assert hvps > 0


def test_labels_and_not_recorded() -> None:
    assert [kind_label(k) for k in KINDS] == ["global", "spurious minimum", "saddle",
                                              "still moving", "unstable", "diverged"]
    assert kind_label(None) == "not recorded"


def test_classify_without_a_gradient_norm_is_not_called_small() -> None:
    """final_grad_norm None (unknown) is never read as 0."""
    problem = well_problem((W_SPURIOUS, 0.0))
    out = classify(problem, status="budget", final_loss=_f0(W_SPURIOUS), final_grad_norm=None,
                   params={"w": torch.tensor([W_SPURIOUS, 0.0], dtype=torch.float64)})
    assert out.kind == "moving" and out.min_eig is None


def test_lanczos_that_did_not_converge_is_said_with_the_run(monkeypatch) -> None:
    """The eigenvalues of a Lanczos call that stopped early are approximate: a warning naming
    the problem and seed, never silence."""
    import dataclasses

    import synaprune.bench.kinds as kinds
    from synaprune.curvature import ConvergenceWarning

    real = kinds.lanczos

    def unconverged(*args, **kwargs):
        return dataclasses.replace(real(*args, **kwargs), converged=False)

    monkeypatch.setattr(kinds, "lanczos", unconverged)
    problem = well_problem((W_SADDLE, 0.0))
    with pytest.warns(ConvergenceWarning, match="seed 5: Lanczos stopped"):
        hessian_extremes(problem, {"w": torch.tensor([W_SADDLE, 0.0], dtype=torch.float64)},
                         seed=5)


def test_the_unstable_window_starts_once_the_noise_has_ended() -> None:
    """A noise schedule still kicking in the second half of the budget makes the loss rise;
    those rises are the noise's, not instability (the escape preset's runs at k = 16 were
    called unstable at spurious minima): the window starts where sigma_t reaches 0."""
    assert get_method("gd").settled_from(1000) == 500
    fraction = ESCAPE["fraction"]  # the noise's share of the budget (above one half)
    assert fraction > 0.5
    assert get_method("synaprune-escape").settled_from(1000) == round(fraction * 1000)
    assert get_method("synaprune-escape:total_steps=2000").settled_from(1000) == round(
        fraction * 2000)
    late = get_method("synaprune-b:noise=0.1,noise_schedule=linear,noise_steps=800,"
                      "noise_trigger=always")
    assert late.settled_from(1000) == 800
    assert get_method("synaprune-b:noise=0.1,noise_schedule=linear,noise_steps=100,"
                      "noise_trigger=always").settled_from(1000) == 500
    problem = get_problem("spirals")  # a small step never solves it: every run goes on
    for method in (get_method("synaprune-escape", lr=0.01),
                   get_method("synaprune-b:lr=0.01,noise=0.1,noise_schedule=linear,"
                              "noise_steps=800,noise_trigger=always")):
        single = run_single(problem, method, 0, 1000, classify=False)
        (batched,) = run_seeds(problem, method, [0], 1000, classify=False)
        loss_at = {int(p[0]): p[1] for p in single.curve}
        s = method.for_budget(1000).settled_from(1000)
        if s in loss_at:  # the stored curve holds that step: the window starts there
            assert single.tail_start == pytest.approx(loss_at[s], rel=1e-12)
        assert single.tail_start is not None and single.steps == 1000
        assert batched.tail_start == pytest.approx(single.tail_start, rel=1e-9)
        assert batched.tail_rise == pytest.approx(single.tail_rise, rel=1e-9, abs=1e-15)
