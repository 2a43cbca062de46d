"""Mechanism C for stacked models against synaprune.ActivationGradientPenalty on one model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import stack_module_state

from synaprune import ActivationGradientPenalty
from synaprune.bench import get_method
from synaprune.bench.penalty import StackedPenalty, hidden_module_names
from synaprune.bench.runner import check_compatible
from synaprune.problems import Problem, get_problem

SEEDS = [3, 4, 5]
BETA, GAMMA = 0.05, 2.0


@pytest.mark.parametrize("problem_spec", ["xor", "spirals:N=40", "autoencoder",
                                          "teacher-student:exact=false,k=4,N=50", "gaussians"])
@pytest.mark.parametrize("batched_data", [False, True], ids=["shared-batch", "per-seed-batch"])
def test_stacked_penalty_equals_activation_gradient_penalty(problem_spec: str,
                                                            batched_data: bool) -> None:
    problem = get_problem(problem_spec)
    x_all, y_all = problem.data()
    n_ex = min(12, x_all.shape[0])
    if batched_data:  # each seed its own minibatch
        idx = torch.stack([torch.randperm(x_all.shape[0], generator=torch.Generator()
                                          .manual_seed(s))[:n_ex] for s in SEEDS])
    else:
        idx = torch.arange(n_ex)
    x, y = x_all[idx], y_all[idx]
    models = [problem.build_model(s) for s in SEEDS]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    stacked = StackedPenalty(problem, base, params, beta=BETA, gamma=GAMMA)
    singles = [ActivationGradientPenalty(
        m, beta=BETA, gamma=GAMMA,
        layers=[m.get_submodule(n) for n in hidden_module_names(problem, m)]) for m in models]
    with torch.no_grad():  # shrink the weights below their initial norms: the stabiliser acts
        for k, v in params.items():
            if k.endswith("weight"):
                v.mul_(0.7)
        for m in models:
            for k, v in m.named_parameters():
                if k.endswith("weight"):
                    v.mul_(0.7)
    active = torch.tensor([True, True, True])
    total, extra = stacked.gradients(params, buffers, x, y, active, batched_data=batched_data)
    for s, (model, pen) in enumerate(zip(models, singles, strict=True)):
        xs, ys = (x[s], y[s]) if batched_data else (x, y)
        loss = pen(problem.loss(model, xs, ys))
        loss.backward()
        # gaussians has no Linear/Conv weight: nothing for the stabiliser to hold
        assert pen.last_penalty > 0 and (pen.last_stabiliser > 0) == bool(pen.weights)
        for k, p in model.named_parameters():
            assert (total[k][s] - p.grad).abs().max().item() <= 1e-12, k
            assert (extra[k][s] - p.grad_extra).abs().max().item() <= 1e-12, k
        assert max((extra[k][s]).abs().max().item() for k in extra) > 1e-6
        pen.remove()
    # a stopped seed gets no gradient, and the others are unchanged
    active = torch.tensor([True, False, True])
    total2, extra2 = stacked.gradients(params, buffers, x, y, active, batched_data=batched_data)
    for k in total:
        assert torch.equal(total2[k][1], torch.zeros_like(total2[k][1]))
        assert torch.equal(extra2[k][1], torch.zeros_like(extra2[k][1]))
        assert (total2[k][[0, 2]] - total[k][[0, 2]]).abs().max().item() <= 1e-15


def test_mechanism_c_is_refused_where_it_cannot_work() -> None:
    with pytest.raises(ValueError, match="exact loss"):
        check_compatible(get_problem("teacher-student:k=4"), get_method("synaprune-c"))
    x = torch.randn(8, 2, dtype=torch.float64)
    linear = Problem(name="linear", options={}, global_loss=0.0, tolerance=1e-3,
                     per_example=True, description="a linear model: no hidden layer",
                     _make_model=lambda g: torch.nn.Linear(2, 1, dtype=torch.float64),
                     _splits={"train": (x, x[:, :1])},
                     _per_example_loss=lambda out, y: (out - y).square().sum(dim=1))
    with pytest.raises(ValueError, match="without activation modules"):
        check_compatible(linear, get_method("synaprune"))
    problem = get_problem("xor")
    model = problem.build_model(0)
    params, _ = stack_module_state([model])
    with pytest.raises(ValueError, match="beta"):
        StackedPenalty(problem, model, params, beta=-1.0, gamma=0.0)
    with pytest.raises(ValueError, match="gamma"):
        get_method("synaprune-bc:gamma=-1")
    with pytest.raises(ValueError, match="beta"):
        get_method("synaprune:beta=-0.1")
