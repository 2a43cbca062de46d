"""Cost of runs in gradient-equivalents, against counts of the work actually done."""

from __future__ import annotations

import pytest
import torch

from synaprune.bench import get_method, run_seeds, run_single
from synaprune.bench.cost import GUARD, HVP, PENALTY, PER_EXAMPLE, step_cost
from synaprune.optim import SAM, SaddleFreeNewton
from synaprune.problems import get_problem


class _Counter:
    """Counts, during ``opt.step`` only, gradients (autograd.grad with a graph, or backward)
    and Hessian-vector products (autograd.grad without ``create_graph``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, optimizer: type) -> None:
        self.gradients = self.hvps = 0
        self.inside = False
        grad, backward, step = torch.autograd.grad, torch.Tensor.backward, optimizer.step

        def counting_grad(*args, **kwargs):
            if self.inside:
                if kwargs.get("create_graph"):
                    self.gradients += 1
                else:
                    self.hvps += 1
            return grad(*args, **kwargs)

        def counting_backward(tensor, *args, **kwargs):
            if self.inside:
                self.gradients += 1
            return backward(tensor, *args, **kwargs)

        def counting_step(opt, *args, **kwargs):
            self.inside = True
            try:
                return step(opt, *args, **kwargs)
            finally:
                self.inside = False

        monkeypatch.setattr(torch.autograd, "grad", counting_grad)
        monkeypatch.setattr(torch.Tensor, "backward", counting_backward)
        monkeypatch.setattr(optimizer, "step", counting_step)


def test_saddle_free_newton_cost_is_its_gradients_and_counted_hvps(monkeypatch) -> None:
    """One gradient (with its graph) and one HVP per Krylov vector a step, counted by
    intercepting autograd during the optimizer's step; xor has 9 parameters, so k = 9 < 20."""
    problem, method = get_problem("xor"), get_method("saddle-free-newton")
    counter = _Counter(monkeypatch, SaddleFreeNewton)
    run = run_single(problem, method, 0, 12, classify=False)
    assert counter.gradients == run.steps and counter.hvps > 0
    assert counter.hvps <= 9 * run.steps
    assert run.cost == pytest.approx(counter.gradients + HVP * counter.hvps, rel=1e-12)


def test_saddle_free_newton_cost_per_seed_in_the_stacked_runner() -> None:
    """Each seed pays its own Krylov dimension, as in the plain loop."""
    problem, method = get_problem("xor"), get_method("saddle-free-newton")
    stacked = run_seeds(problem, method, [0, 1, 2], 12, classify=False)
    for r in stacked:
        single = run_single(problem, method, r.seed, 12, classify=False)
        assert r.steps == single.steps
        assert r.cost == pytest.approx(single.cost, rel=1e-12)


def test_sam_counts_two_gradients_a_step(monkeypatch) -> None:
    problem, method = get_problem("xor"), get_method("sam")
    counter = _Counter(monkeypatch, SAM)
    run = run_single(problem, method, 0, 20, classify=False)
    # the runner's backward before the step + the closure's inside it
    assert counter.gradients == run.steps  # inside the step
    assert run.cost == pytest.approx(2.0 * run.steps, rel=1e-15)


@pytest.mark.parametrize(("spec", "per_step"), [
    ("gd", 1.0),
    ("adam", 1.0),
    ("sgd:batch_size=4", 4 / 200),  # spirals: N = 200 training points
    ("synaprune-a", PER_EXAMPLE),
    ("synaprune-c", 1.0 + PENALTY),
    ("synaprune-b:noise_guard=1", 1.0 + GUARD),  # the guard's two loss evaluations
])
def test_cost_per_step_of_first_order_methods(spec: str, per_step: float) -> None:
    problem = get_problem("spirals")
    data = problem.data("train")
    assert data is not None and data[0].shape[0] == 200
    method = get_method(spec)
    assert step_cost(method, problem) == pytest.approx(per_step, rel=1e-15)
    (run,) = run_seeds(problem, method, [0], 7, classify=False)
    assert run.cost == pytest.approx(per_step * run.steps, rel=1e-12)


def test_stopped_runs_stop_paying() -> None:
    """A run that succeeded (or was frozen) costs only the steps it took."""
    problem = get_problem("teacher-student:k=6")
    runs = run_seeds(problem, get_method("gd:lr=0.3"), list(range(4)), 800, classify=False)
    assert len({r.steps for r in runs}) > 1
    assert all(r.cost == float(r.steps) for r in runs)
