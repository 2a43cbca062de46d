"""The ``saddle-free-newton`` method in the lab: registry, seed-batched runner against the plain
loop, frozen seeds, and a comparison with gd."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor
from torch.optim import Optimizer

from synaprune import SaddleFreeNewton
from synaprune.bench import RunResult, get_method, run_seeds, run_single
from synaprune.bench.methods import SaddleFreeNewtonMethod
from synaprune.problems import get_problem


def _max_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_spec_round_trip_and_optimizer() -> None:
    method = get_method("saddle-free-newton:lr=0.5,damping=0.1")
    assert isinstance(method, SaddleFreeNewtonMethod)
    assert (method.lr, method.damping, method.krylov_dim) == (0.5, 0.1, 20)
    assert method.spec == "saddle-free-newton:damping=0.1,krylov_dim=20,lr=0.5"
    assert get_method(method.spec) == method
    assert method.loss_closure and not method.needs_closure and not method.stochastic
    assert method.batch_size is None and method.penalty is None
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = method.make_optimizer([p], torch.Generator())
    assert type(opt) is SaddleFreeNewton and opt.num_models is None
    group = opt.param_groups[0]
    assert (group["lr"], group["damping"], group["krylov_dim"]) == (0.5, 0.1, 20)
    stacked = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    assert method.make_optimizer([stacked], [torch.Generator(), torch.Generator()]).num_models == 2
    with pytest.raises(ValueError, match=r"Invalid damping: 0\.0"):
        get_method("saddle-free-newton:damping=0")
    with pytest.raises(ValueError, match="Invalid krylov_dim: 0"):
        get_method("saddle-free-newton:krylov_dim=0")


CASES = [
    ("xor", "saddle-free-newton", 40),  # k = 20 capped at 9: the full-space step
    ("xor:hidden=3", "saddle-free-newton:krylov_dim=4,lr=0.5", 40),  # a true subspace
    ("teacher-student:exact=true,k=4", "saddle-free-newton:lr=0.5", 60),  # seeds stop at
    # different steps
]


@pytest.mark.parametrize(("problem_spec", "method_spec", "steps"), CASES,
                         ids=[f"{p}|{m}" for p, m, _ in CASES])
def test_batched_equals_plain_loop(problem_spec: str, method_spec: str, steps: int) -> None:
    problem, method = get_problem(problem_spec), get_method(method_spec)
    seeds = [0, 1, 2, 3, 4, 5]
    batched = run_seeds(problem, method, seeds, steps)
    for seed in (1, 4):
        ref = run_single(problem, method, seed, steps)
        got = batched[seeds.index(seed)]
        assert (got.status, got.steps, got.steps_to_success) == (
            ref.status, ref.steps, ref.steps_to_success)
        assert _max_diff(got.params, ref.params) <= 1e-10
        assert got.final_loss == pytest.approx(ref.final_loss, abs=1e-10)
        assert [p[0] for p in got.curve] == [p[0] for p in ref.curve]
        for (_, la, ga), (_, lb, gb) in zip(got.curve, ref.curve, strict=True):
            assert la == pytest.approx(lb, abs=1e-10)
            assert (ga is None) == (gb is None)
            if ga is not None:
                assert ga == pytest.approx(gb, abs=1e-10)
        # The run really moved.
        assert _max_diff(got.params, dict(problem.build_model(seed).named_parameters())) > 1e-3
    if problem_spec.startswith("teacher-student"):
        # Seeds stopped at different steps, so the frozen-seed masking was exercised.
        assert len({r.steps for r in batched}) > 1 and all(r.success for r in batched)


class _Recording(SaddleFreeNewton):
    """Records, for every step, how far each stacked model moved inside the optimizer (before
    the runner restores the frozen seeds)."""

    moves: ClassVar[list[list[float]]] = []

    def step(self, closure: Any = None) -> Tensor:  # type: ignore[override]
        params = self.param_groups[0]["params"]
        before = [p.detach().clone() for p in params]
        loss = super().step(closure)
        s = params[0].shape[0]
        moved = torch.stack([(p.detach() - b).reshape(s, -1).abs().amax(1)
                             for p, b in zip(params, before, strict=True)]).amax(0)
        self.moves.append(moved.tolist())
        return loss


@dataclass(frozen=True)
class _RecordingMethod(SaddleFreeNewtonMethod):
    def make_optimizer(self, params: Any, generator: Any = None) -> Optimizer:
        stacked = generator is not None and not isinstance(generator, torch.Generator)
        return _Recording(params, lr=self.lr, damping=self.damping, krylov_dim=self.krylov_dim,
                          num_models=len(generator) if stacked else None)


def test_stopped_seeds_get_exactly_zero_steps() -> None:
    """The runner's masked loss gives a stopped seed a zero gradient and a zero Hessian block,
    so the optimizer itself leaves it in place (no reliance on the runner's restore)."""
    _Recording.moves.clear()
    problem = get_problem("teacher-student:exact=true,k=4")
    results: list[RunResult] = run_seeds(problem, _RecordingMethod(lr=0.5), list(range(6)), 60)
    stops = [r.steps for r in results]
    assert len(set(stops)) > 1
    assert len(_Recording.moves) == max(stops)
    for t, moved in enumerate(_Recording.moves):
        for i, stop in enumerate(stops):
            if t >= stop:
                assert moved[i] == 0.0
            else:
                assert moved[i] > 0.0


@pytest.mark.parametrize(("problem_spec", "steps"),
                         [("xor", 30), ("teacher-student:exact=true,k=4", 20)])
def test_lower_loss_than_gd_on_most_seeds(problem_spec: str, steps: int) -> None:
    """Same budget, default options of both: the lower final loss on most seeds."""
    problem = get_problem(problem_spec)
    seeds = list(range(100, 108))
    sfn = run_seeds(problem, get_method("saddle-free-newton"), seeds, steps)
    gd = run_seeds(problem, get_method("gd"), seeds, steps)
    better = [a.final_loss < b.final_loss for a, b in zip(sfn, gd, strict=True)]
    assert sum(better) >= 6, [(a.final_loss, b.final_loss) for a, b in zip(sfn, gd, strict=True)]
