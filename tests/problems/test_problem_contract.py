"""The Problem contract, checked on every registered problem.

Each problem must give deterministic float64 models per seed, a finite scalar loss whose
stateful and functional (vmap over stacked seeds) forms agree to float64 precision, and
gradients for every trainable parameter.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.func import grad, stack_module_state, vmap

from synaprune.problems import Problem, get_problem, list_problems

# Small variants keep the folder fast; every registered problem appears at least once.
SPECS = [
    "xor",
    "xor:hidden=3",
    "teacher-student:k=5",
    "teacher-student:k=5,n=3,d=7",
    "teacher-student:k=5,exact=false,N=300",
    "spirals",
    "gaussians",
    "gaussians:components=6",
    "autoencoder",
    "autoencoder:bottleneck=4,hidden=16",
    "digits",
]
SEEDS = (0, 1, 7)


@pytest.fixture(scope="module", params=SPECS, ids=SPECS)
def problem(request: pytest.FixtureRequest) -> Problem:
    return get_problem(request.param)


def test_specs_cover_every_problem() -> None:
    assert {spec.split(":")[0] for spec in SPECS} == set(list_problems())


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def test_build_model_is_deterministic_float64_and_seeded(problem: Problem) -> None:
    rng_before = torch.get_rng_state()
    a, b, c = problem.build_model(3), problem.build_model(3), problem.build_model(4)
    assert torch.equal(torch.get_rng_state(), rng_before), "building touched the global RNG"
    state_a, state_b, state_c = _state(a), _state(b), _state(c)
    assert state_a.keys() == state_b.keys() == state_c.keys()
    for name in state_a:
        assert state_a[name].dtype == torch.float64, name
        assert torch.equal(state_a[name], state_b[name]), name
    trained = [name for name, _ in a.named_parameters()]
    assert trained
    assert any(not torch.equal(state_a[name], state_c[name]) for name in trained)
    assert all(not p.is_meta for p in a.parameters())
    # Every seed gives a different initialisation.
    first = [
        torch.cat([p.detach().reshape(-1) for p in problem.build_model(s).parameters()])
        for s in range(6)
    ]
    assert len({tuple(v.tolist()) for v in first}) == len(first)


def test_loss_is_a_finite_float64_scalar(problem: Problem) -> None:
    loss = problem.loss(problem.build_model(0))
    assert loss.shape == ()
    assert loss.dtype == torch.float64
    assert math.isfinite(loss.item())
    assert loss.item() >= -1e-12


def test_global_loss_and_tolerance(problem: Problem) -> None:
    assert math.isfinite(problem.global_loss)
    assert problem.global_loss >= 0
    assert problem.tolerance > 0
    assert problem.solved(problem.global_loss)
    assert problem.solved(problem.global_loss + 0.5 * problem.tolerance)
    assert not problem.solved(problem.global_loss + 2 * problem.tolerance)
    assert not problem.solved(float("nan"))
    assert not problem.solved(float("inf"))
    # A random initialisation is not already a success.
    assert not problem.solved(problem.loss(problem.build_model(0)).item())


def test_data_and_per_example_losses(problem: Problem) -> None:
    model = problem.build_model(0)
    data = problem.data()
    if not problem.per_example:
        assert data is None
        assert problem.splits == ()
        return
    assert data is not None
    x, y = data
    assert x.dtype == torch.float64
    assert y.dtype in (torch.float64, torch.int64)
    assert problem.splits[0] == "train"
    output = model(x)
    per_example = problem.per_example_loss_fn(output, y)
    assert per_example.shape == (x.shape[0],)
    assert torch.isfinite(per_example).all()
    full = problem.loss(model)
    torch.testing.assert_close(problem.loss_fn(output, y), full, rtol=0, atol=0)
    torch.testing.assert_close(per_example.mean(), full, rtol=1e-14, atol=1e-15)
    # A minibatch is the mean of its per-example losses.
    batch = problem.loss(model, x[1:4], y[1:4])
    torch.testing.assert_close(batch, per_example[1:4].mean(), rtol=1e-14, atol=1e-15)
    # data() returns copies.
    x.zero_()
    torch.testing.assert_close(problem.loss(model), full, rtol=0, atol=0)


def test_vmap_over_stacked_seeds_matches_each_model(problem: Problem) -> None:
    models = [problem.build_model(seed) for seed in SEEDS]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    losses = vmap(lambda p, b: problem.functional_loss(base, p, b))(params, buffers)
    grads = vmap(grad(lambda p, b: problem.functional_loss(base, p, b)))(params, buffers)
    assert losses.shape == (len(SEEDS),)
    for i, model in enumerate(models):
        alone = problem.loss(model)
        torch.testing.assert_close(losses[i], alone.detach(), rtol=1e-12, atol=1e-12)
        alone.backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name][i], p.grad, rtol=1e-12, atol=1e-12)
    if problem.per_example:  # minibatches pass through vmap unbatched
        x, y = problem.data()
        f = vmap(lambda p, b: problem.functional_loss(base, p, b, x[:5], y[:5]))
        batch = f(params, buffers)
        for i, model in enumerate(models):
            expected = problem.loss(model, x[:5], y[:5]).detach()
            torch.testing.assert_close(batch[i], expected, rtol=1e-12, atol=1e-12)


def test_stacked_loss_matches_each_model(problem: Problem) -> None:
    """problem.stacked_loss (the runner's full-batch loss: the exact loss's own stacked form
    for teacher-student, vmap otherwise) against one model at a time, value and gradient."""
    models = [problem.build_model(seed) for seed in SEEDS]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    losses = problem.stacked_loss(base, params, buffers)
    assert losses.shape == (len(SEEDS),)
    grads = torch.autograd.grad(losses.sum(), list(params.values()))
    for i, model in enumerate(models):
        alone = problem.loss(model)
        torch.testing.assert_close(losses[i], alone.detach(), rtol=1e-13, atol=1e-14)
        alone.backward()
        for g, (name, p) in zip(grads, model.named_parameters(), strict=True):
            torch.testing.assert_close(g[i], p.grad, rtol=1e-12, atol=1e-14, msg=name)


def test_gradients_exist_for_all_trainable_parameters(problem: Problem) -> None:
    model = problem.build_model(1)
    problem.loss(model).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_wrong_use_raises(problem: Problem) -> None:
    model = problem.build_model(0)
    if problem.per_example:
        with pytest.raises(ValueError, match="no split 'nope'; choose from: train"):
            problem.data("nope")
        x, y = problem.data()
        with pytest.raises(ValueError, match="both x and y"):
            problem.loss(model, x)
        with pytest.raises(ValueError, match="no exact loss"):
            problem.exact_loss_fn(dict(model.named_parameters()))
        with pytest.raises(ValueError):
            problem.per_example_loss_fn(model(x)[:-1], y)
    else:
        with pytest.raises(ValueError, match="takes no data"):
            problem.loss(model, torch.zeros(2, 5, dtype=torch.float64), torch.zeros(2, 1))
        with pytest.raises(ValueError, match="exact loss without per-example"):
            problem.per_example_loss_fn(torch.zeros(2, 1), torch.zeros(2, 1))
    if not problem.classification:
        with pytest.raises(ValueError, match="not a classification problem"):
            problem.accuracy(model)


def test_description_and_repr(problem: Problem) -> None:
    assert problem.description
    text = repr(problem)
    assert problem.name in text
    assert "_make_model" not in text
