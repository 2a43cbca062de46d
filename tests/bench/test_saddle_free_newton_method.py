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
from synaprune.bench import RunResult, get_method, run_seeds
from synaprune.bench.methods import SaddleFreeNewtonMethod
from synaprune.problems import get_problem


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


# run_seeds against run_single for this method: the shared table of tests/bench/test_runner.py.


def test_seeds_that_stop_early_are_frozen_and_the_rest_finish() -> None:
    """On the exact teacher-student loss the seeds succeed at different steps, so the runner's
    masking of stopped seeds is exercised; every seed still succeeds."""
    batched = run_seeds(get_problem("teacher-student:exact=true,k=4"),
                        get_method("saddle-free-newton:lr=0.5"), [0, 1, 2, 3, 4, 5], 60)
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


def test_stopped_seeds_leave_the_batch() -> None:
    """A seed that stopped leaves the stacked tensors and the optimizer's state: at step t the
    optimizer steps exactly the seeds still running, and every one of them moves."""
    _Recording.moves.clear()
    problem = get_problem("teacher-student:exact=true,k=4")
    results: list[RunResult] = run_seeds(problem, _RecordingMethod(lr=0.5), list(range(6)), 60)
    stops = [r.steps for r in results]
    assert len(set(stops)) > 1
    assert len(_Recording.moves) == max(stops)
    for t, moved in enumerate(_Recording.moves):
        assert len(moved) == sum(stop > t for stop in stops)
        assert min(moved) > 0.0


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
