"""per_example_sums (one model or S stacked ones) against a per-example loop in float64, on the
closed-form path and the vmap path alike."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import stack_module_state

from synaprune.probes import per_example_sums
from synaprune.problems import get_problem

SEEDS = (3, 7, 11)
# MLPs (the closed form applies) from the problem registry, with readable ids.
MLP_PROBLEMS = ["xor:hidden=3", "spirals:N=40", "autoencoder:hidden=6", "digits:hidden=5"]


def _reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, per_example_loss):
    """sum_i g_i**2 and sum_i g_i by a loop over examples, one backward pass each."""
    params = dict(model.named_parameters())
    sumsq = {k: torch.zeros_like(v) for k, v in params.items()}
    sums = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(x.shape[0]):
        loss = per_example_loss(model(x[i:i + 1]), y[i:i + 1]).sum()
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for k, g in zip(params, grads, strict=True):
            if g is not None:
                sumsq[k] += g.square()
                sums[k] += g
    return sumsq, sums


def _data(problem, n: int, batched: bool):
    x, y = problem.data("train")
    n = min(n, x.shape[0])
    x, y = x[:n], y[:n]
    if batched:  # each seed its own examples
        perm = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s))
                            for s in SEEDS])
        x, y = x[perm], y[perm]
    return x, y


def _count_forward_calls(model: nn.Module) -> list[int]:
    """A counter of the whole model's forward calls: the vmap path calls the model (through
    functional_call), the closed form calls its layers one by one, never the model itself."""
    calls = [0]

    def hook(*_):
        calls[0] += 1

    model.register_forward_hook(hook)
    return calls


def _close(got: torch.Tensor, ref: torch.Tensor) -> None:
    # float64 throughout: the closed form and the loop differ only by summation order
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("force_fallback", [False, True], ids=["closed-form", "vmap"])
@pytest.mark.parametrize("batched_data", [False, True], ids=["shared-batch", "per-seed-batch"])
@pytest.mark.parametrize("spec", MLP_PROBLEMS)
def test_stacked_statistics_equal_the_per_example_loop(spec, batched_data, force_fallback):
    problem = get_problem(spec)
    models = [problem.build_model(s) for s in SEEDS]
    params, buffers = stack_module_state(models)
    x, y = _data(problem, 30, batched_data)
    calls = _count_forward_calls(models[0])
    sumsq, sums = per_example_sums(
        models[0], params, x, y, problem.per_example_loss_fn, buffers=buffers,
        num_models=len(SEEDS), batched_data=batched_data, force_fallback=force_fallback,
        with_sum=True)
    assert (calls[0] > 0) == force_fallback  # which path ran
    assert sumsq.keys() == sums.keys() == params.keys()
    for s, model in enumerate(models):
        xs, ys = (x[s], y[s]) if batched_data else (x, y)
        ref_sq, ref_sum = _reference(model, xs, ys, problem.per_example_loss_fn)
        for k in params:
            assert ref_sq[k].abs().max() > 0
            _close(sumsq[k][s], ref_sq[k])
            _close(sums[k][s], ref_sum[k])


@pytest.mark.parametrize("force_fallback", [False, True], ids=["closed-form", "vmap"])
@pytest.mark.parametrize("spec", MLP_PROBLEMS)
def test_one_model_statistics_equal_the_per_example_loop(spec, force_fallback):
    problem = get_problem(spec)
    model = problem.build_model(5)
    x, y = _data(problem, 25, False)
    calls = _count_forward_calls(model)
    sumsq, sums = per_example_sums(model, dict(model.named_parameters()), x, y,
                                   problem.per_example_loss_fn, force_fallback=force_fallback,
                                   with_sum=True)
    assert (calls[0] > 0) == force_fallback  # which path ran
    ref_sq, ref_sum = _reference(model, x, y, problem.per_example_loss_fn)
    for k in ref_sq:
        _close(sumsq[k], ref_sq[k])
        _close(sums[k], ref_sum[k])


class _Residual(nn.Module):
    """Not an nn.Sequential, with a buffer and a LayerNorm: only the vmap path applies."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.norm, self.out = nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)
        self.register_buffer("shift", torch.linspace(-1, 1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(torch.tanh(self.norm(h) + self.shift) + h)


def test_any_model_takes_the_vmap_path_and_chunks_change_nothing():
    torch.manual_seed(0)
    model = _Residual().double()
    x = torch.randn(9, 3, dtype=torch.float64)
    y = torch.randn(9, 2, dtype=torch.float64)

    def losses(out, target):
        return (out - target).square().sum(1)

    ref_sq, ref_sum = _reference(model, x, y, losses)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    for chunk in (2**24, 30):  # one chunk; chunks of one example
        sumsq, sums = per_example_sums(model, params, x, y, losses, buffers=buffers,
                                       with_sum=True, chunk_elements=chunk)
        for k in ref_sq:
            _close(sumsq[k], ref_sq[k])
            _close(sums[k], ref_sum[k])
