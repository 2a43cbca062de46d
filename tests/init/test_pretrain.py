"""Greedy random-feature pretraining (seed 003): monotone objectives, exact bounds, depth."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from synaprune.init import PretrainedNet, add_layers, deep_from_shallow, pretrain
from synaprune.problems import get_problem

DT = torch.float64


def seed_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed 003's problem: y = sin(3 x0) sin(3 x1), x ~ N(0, I_2)."""
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=DT)
    return x, torch.sin(3 * x[:, 0]) * torch.sin(3 * x[:, 1])


def mse(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (module(x) - y.reshape(len(y), -1)).square().mean().item()


def _monotone(objectives: tuple[float, ...]) -> bool:
    return all(b <= a for a, b in itertools.pairwise(objectives))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("perturbations", [0, 5])
def test_objective_never_rises_and_is_the_modules_loss_bit_for_bit(activation, perturbations):
    x, y = seed_data(40)
    result = pretrain(x, y, neurons=25, activation=activation, perturbations=perturbations,
                      seed=1)
    assert _monotone(result.objectives)
    assert result.objectives[0] == pytest.approx(y.var(unbiased=False).item(), rel=1e-12)
    assert result.objective == result.objectives[-1] == mse(result.module, x, y)
    assert result.accepted == result.module.widths[0] == 25 - result.unfilled
    assert len(result.theorem1) == len(result.theorem1_relative) == result.rejected
    if perturbations:
        assert result.perturbations_tried == perturbations * result.accepted
        assert result.perturbations_accepted > 0
    for connect in (False, True):
        deep = add_layers(result, x, y, layers=3, width=2, connect_input=connect,
                          perturbations=perturbations, seed=2)
        assert _monotone(deep.objectives) and deep.objectives[:len(result.objectives)] == \
            result.objectives
        assert deep.objective == mse(deep.module, x, y)
        assert len(deep.module.layers) == 4 and max(deep.layers) == 4


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_as_many_neurons_as_points_fits_to_rounding(activation):
    x, y = seed_data(30, seed=5)
    result = pretrain(x, y, neurons=30, activation=activation, seed=3)
    # Interpolation: the residual of a backward-stable solve is ~ eps * cond * |y|; the mean
    # square of it sits below 1e-20 of the variance here (measured ~1e-22), far below any fit.
    assert result.objective <= 1e-20 * y.var().item()
    assert result.objective == mse(result.module, x, y)


@pytest.mark.parametrize("data_seed", [0, 11])
def test_relu_neurons_inside_the_fitted_span_do_not_take_a_slot(data_seed):
    # Seed 003's setting (N = 100). A ReLU active on every point is linear in x: with the bias,
    # three such neurons span all there is; a fourth, or an all-zero one, changes only the
    # rounding of the fit. Kept for a last-digit drop, they left these runs at 6e-5 and 1e-4
    # of var(y) with 100 neurons instead of an exact fit.
    x, y = seed_data(100, seed=data_seed)
    result = pretrain(x, y, neurons=100, activation="relu", seed=10_000 + data_seed)
    # An exact fit leaves rounding, (cond * eps)^2 relative with cond up to ~1e5 here
    # (measured 2e-20 and 3e-19); the defect left 6e-5 and 1e-4.
    assert result.objective <= 1e-14 * y.var().item()
    features = result.module.hidden_output(x).detach()
    assert (features.norm(dim=0) > 0).all()  # no dead neuron was kept


def test_relu_weight_scale_changes_nothing_but_rounding():
    # relu(c z) = c relu(z) for c > 0 and the least-squares fit rescales the output weights:
    # the objectives at unit scale and at 0.01 agree to rounding up to the first rejection
    # (a rejection at rounding level in one run shifts the random stream of the rest).
    x, y = seed_data(60)
    one = pretrain(x, y, neurons=30, activation="relu", weight_scale=1.0, seed=7)
    small = pretrain(x, y, neurons=30, activation="relu", weight_scale=0.01, seed=7)
    first = min([*one.rejected_neurons, *small.rejected_neurons, 30])
    assert first >= 10  # the comparison below covers at least ten neurons
    for a, b in list(zip(one.objectives, small.objectives, strict=True))[: first + 1]:
        assert a == pytest.approx(b, rel=1e-9)  # rounding of the scaled draws, ~1e-15 each
    assert one.rejected == len(one.theorem1) == len(one.rejected_neurons)


def test_theorem1_quantity_is_zero_for_neurons_that_cannot_help():
    # A zero target is fitted exactly by the empty network: no neuron can lower the objective
    # (zero), every one is rejected and its Theorem 1 quantity g'^T (G s - Y) is exactly 0.
    x, _ = seed_data(12)
    y = torch.zeros(12, dtype=DT)
    result = pretrain(x, y, neurons=2, activation="tanh", max_tries=3, seed=0)
    assert result.objective == 0.0 and result.accepted == 0 and result.unfilled == 2
    assert result.rejected == 6 and result.rejected_neurons == (0,) * 6
    assert set(result.theorem1) == {0.0} and set(result.theorem1_relative) == {0.0}
    assert result.module.widths == [0] and mse(result.module, x, y) == 0.0


def test_pass_through_layer_reproduces_the_previous_fit_exactly():
    x, y = seed_data(40)
    shallow = pretrain(x, y, neurons=8, activation="relu", seed=1)
    for connect in (False, True):
        deep = add_layers(shallow, x, y, layers=1, width=3, connect_input=connect, seed=4)
        layer = deep.module.layers[1]
        with torch.no_grad():
            carried = layer.carry(shallow.module.hidden_output(x))
            assert torch.equal(carried, shallow.module(x))
            assert torch.equal(deep.module.layers[0].hidden.weight,
                               shallow.module.layers[0].hidden.weight)
        # The new layer starts from the carried fit: same objective, bit for bit.
        start = len(shallow.objectives)
        assert deep.objectives[start] == shallow.objective
        assert deep.layers[start] == 2
    assert mse(shallow.module, x, y) == shallow.objective  # the input result is unchanged


def test_deep_from_shallow_computes_the_shallow_function():
    x, y = seed_data(40)
    shallow = pretrain(x, y, neurons=11, activation="relu", seed=2)
    deep = deep_from_shallow(shallow.module, width=3)
    assert isinstance(deep, PretrainedNet) and deep.widths == [3, 3, 3, 2]
    with torch.no_grad():
        a, b = shallow.module(x), deep(x)
    # The output sum is added in another order: rounding of ~11 terms of size ~|s_i g_i|.
    scale = (shallow.module.output.weight.abs() @ shallow.module.hidden_output(x).T).max()
    assert (a - b).abs().max() <= 64 * torch.finfo(DT).eps * scale
    assert mse(deep, x, y) == pytest.approx(shallow.objective, rel=1e-9)


def _gd_final_loss(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   steps: int) -> tuple[float, list[float]]:
    params = [p for p in module.parameters() if p.numel()]
    names = [n for n, p in module.named_parameters() if p.numel()]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, [p.numel() for p in params])
        state = {n: c.view_as(p) for n, c, p in zip(names, chunks, params, strict=True)}
        out = torch.func.functional_call(module, state, (x,))
        return (out - y).square().mean()

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    top = torch.linalg.eigvalsh(torch.func.hessian(loss_of)(flat))[-1].item()
    lr = 0.5 / top  # well inside GD's stability limit 2 / lambda_max at the start
    opt = torch.optim.SGD(params, lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (module(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return mse(module, x, y), losses


def _problem_table():
    gx, gy = get_problem("gaussians:N=40").data()
    sx, sy = seed_data(40)
    return {"seed-003-relu": (sx, sy[:, None], "relu"), "seed-003-tanh": (sx, sy[:, None], "tanh"),
            "gaussians-tanh": (gx, gy, "tanh"), "gaussians-relu": (gx, gy, "relu")}


@pytest.mark.parametrize("name", sorted(_problem_table()))
def test_gradient_descent_from_the_initialisation_ends_below_the_bound(name):
    x, y, activation = _problem_table()[name]
    for seed in range(4):
        result = pretrain(x, y, neurons=6, activation=activation, seed=seed)
        if seed % 2:
            result = add_layers(result, x, y, layers=2, width=2, connect_input=seed == 3,
                                seed=seed)
        final, losses = _gd_final_loss(result.module, x, y, steps=200)
        assert losses[0] == result.objective  # the bound is the loss GD starts from
        assert math.isfinite(final) and final <= result.objective, (name, seed)


def test_bad_input_one_line_errors():
    x, y = seed_data(10)
    result = pretrain(x, y, neurons=2, seed=0)
    bad = [
        (lambda: pretrain(x, y, neurons=0), "neurons"),
        (lambda: pretrain(x, y, neurons=3, activation="sigmoid"), "activation"),
        (lambda: pretrain(x, y, neurons=3, weight_scale=0.0), "weight_scale"),
        (lambda: pretrain(x, y, neurons=3, weight_scale=float("nan")), "weight_scale"),
        (lambda: pretrain(x, y, neurons=3, perturbations=-1), "perturbations"),
        (lambda: pretrain(x, y, neurons=3, max_tries=0), "max_tries"),
        (lambda: pretrain(x.clone().fill_(float("nan")), y, neurons=3), "NaN"),
        (lambda: pretrain(x, torch.full_like(y, float("inf")), neurons=3), "NaN or inf"),
        (lambda: pretrain(x, y[:5], neurons=3), "size"),
        (lambda: add_layers(result, x, y, layers=0, width=2), "layers"),
        (lambda: add_layers(result, x, y, layers=1, width=-1), "width"),
        (lambda: add_layers(result, x[:, :1], y, layers=1, width=1), "do not match"),
        (lambda: deep_from_shallow(result.module, width=0), "width"),
    ]
    for call, words in bad:
        with pytest.raises(ValueError, match=words) as info:
            call()
        assert "\n" not in str(info.value)
