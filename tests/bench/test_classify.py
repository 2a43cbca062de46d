"""How a run ended: the dense Hessian against known matrices, each kind on a constructed run."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from synaprune.bench import RunResult, get_method, run_seeds
from synaprune.bench._classify import classify_run, hessian_eigenvalues
from synaprune.problems import Problem, get_problem

F64 = torch.float64


class _Point(nn.Module):
    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, dtype=F64))


def _problem(loss, global_loss: float = 0.0) -> Problem:
    return Problem(name="toy", options={}, global_loss=global_loss, tolerance=1e-3,
                   per_example=False, description="test", _make_model=_Point,
                   _exact_loss=lambda pb: loss(pb["w"]))


def _run(problem: Problem, w: list[float], *, status: str = "budget") -> RunResult:
    params = {"w": torch.tensor(w, dtype=F64)}
    loss = float(problem.exact_loss_fn(params))
    grad = torch.func.grad(lambda v: problem.exact_loss_fn({"w": v}))(params["w"])
    return RunResult(seed=0, status=status, success=status == "ok", final_loss=loss,
                     best_loss=loss, steps=1, steps_to_success=None, wall_time=0.0, curve=[],
                     params=params, final_grad_norm=None if status == "diverged"
                     else float(grad.norm()))


def test_hessian_eigenvalues_of_known_quadratics() -> None:
    # 1 + w0^2 + 3 w0 w1 + 2 w1^2 has Hessian [[2, 3], [3, 4]]: eigenvalues 3 -+ sqrt(10).
    problem = _problem(lambda w: 1 + w[0] ** 2 + 3 * w[0] * w[1] + 2 * w[1] ** 2)
    eig = hessian_eigenvalues(problem, {"w": torch.tensor([0.3, -0.2], dtype=F64)})
    torch.testing.assert_close(eig, torch.tensor([3 - math.sqrt(10), 3 + math.sqrt(10)],
                                                 dtype=F64), rtol=1e-14, atol=1e-14)


def test_hessian_eigenvalues_match_autograd_on_teacher_student() -> None:
    problem = get_problem("teacher-student:k=3,n=2")
    w = problem.build_model(5).hidden.weight.detach()
    a = torch.ones(3, dtype=F64)
    ref = torch.autograd.functional.hessian(
        lambda v: problem.exact_loss_fn({"hidden.weight": v.view(3, 2), "output_weight": a}),
        w.reshape(-1))
    got = hessian_eigenvalues(problem, {"hidden.weight": w})
    torch.testing.assert_close(got, torch.linalg.eigvalsh(ref), rtol=1e-12, atol=1e-12)


def test_each_kind_on_a_constructed_run() -> None:
    bowl = _problem(lambda w: 1 + w[0] ** 2 + 2 * w[1] ** 2)  # global loss 0 is never reached
    saddle = _problem(lambda w: 1 + w[0] ** 2 - w[1] ** 2 + w[1] ** 4)
    assert classify_run(bowl, _run(bowl, [0.0, 0.0]), grad_tol=1e-8).kind == "spurious"
    point = classify_run(bowl, _run(bowl, [0.0, 0.0]), grad_tol=1e-8)
    assert point.min_eig == pytest.approx(2.0, rel=1e-14) and point.saddle_index == 0
    point = classify_run(saddle, _run(saddle, [0.0, 0.0]), grad_tol=1e-8)
    assert (point.kind, point.saddle_index) == ("saddle", 1)
    assert point.min_eig == pytest.approx(-2.0, rel=1e-14)
    # gradient above the tolerance: still moving, whatever the curvature; no Hessian computed
    point = classify_run(bowl, _run(bowl, [1e-3, 0.0]), grad_tol=1e-6)
    assert (point.kind, point.min_eig) == ("moving", None)
    assert classify_run(bowl, _run(bowl, [1e-3, 0.0]), grad_tol=1e-2).kind == "spurious"
    assert classify_run(bowl, _run(bowl, [0.0, 0.0], status="diverged"),
                        grad_tol=1e-8).kind == "diverged"
    assert classify_run(bowl, _run(bowl, [0.0, 0.0], status="ok"),
                        grad_tol=1e-8).kind == "global"


def test_gd_runs_on_teacher_student_are_named_as_the_stored_numbers_say() -> None:
    # k = 8, lr 5/8, 2000 steps: global runs stop at the tolerance; seeds 6 and 11 end at the
    # k = 8 spurious value 0.02151 with a tiny gradient and a positive-definite Hessian.
    problem = get_problem("teacher-student:k=8")
    results = run_seeds(problem, get_method("gd", lr=5 / 8), range(12), 2000)
    kinds = [classify_run(problem, r, grad_tol=1e-6) for r in results]
    for r, p in zip(results, kinds, strict=True):
        if r.success:
            assert p.kind == "global"
        else:
            assert r.final_grad_norm <= 1e-6 and p.kind == "spurious"
            assert p.min_eig > 1e-3 and r.final_loss == pytest.approx(0.02151, abs=1e-5)
    assert [r.seed for r, p in zip(results, kinds, strict=True) if p.kind == "spurious"] == [6, 11]
