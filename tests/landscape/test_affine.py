"""The affine (shared first layer) landscape path against a per-point loop in float64, and the
cases it must leave to the general vmap path."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from synaprune.landscape import interpolate, random_directions, slice_2d
from synaprune.landscape._affine import mlp_layers


def _seeded(model: nn.Module, g: torch.Generator) -> nn.Module:
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model


def _deep(g):  # three layers, one without bias, two activations, MSE on 4 outputs
    model = _seeded(nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 5, bias=False),
                                  nn.Tanh(), nn.Linear(5, 4)), g)
    x = torch.randn(30, 6, generator=g, dtype=torch.float64)
    return model, (x, torch.randn(30, 4, generator=g, dtype=torch.float64)), F.mse_loss


def _shallow(g):  # one hidden layer, first layer without bias, cross-entropy
    model = _seeded(nn.Sequential(nn.Linear(4, 11, bias=False), nn.GELU(), nn.Linear(11, 3)), g)
    x = torch.randn(25, 4, generator=g, dtype=torch.float64)
    return model, (x, torch.randint(0, 3, (25,), generator=g)), F.cross_entropy


def _linear(g):  # no hidden layer at all
    model = _seeded(nn.Sequential(nn.Linear(3, 2)), g)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    return model, (x, torch.randn(10, 2, generator=g, dtype=torch.float64)), F.mse_loss


CASES = {"deep-relu-tanh-mse": _deep, "shallow-gelu-ce": _shallow, "linear": _linear}


def _loop(model, loss_fn, data, points) -> torch.Tensor:
    """The usual way (tomgoldstein/loss-landscape): load the weights, forward, no grad."""
    clone = copy.deepcopy(model)
    out = []
    with torch.no_grad():
        for point in points:
            clone.load_state_dict(point, strict=False)  # buffers stay as they are
            out.append(loss_fn(clone(data[0]), data[1]).item())
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("chunk_size", [None, 1, 7])
@pytest.mark.parametrize("case", CASES)
def test_affine_slice_equals_loop(case, chunk_size):
    g = torch.Generator().manual_seed(3)
    model, data, loss_fn = CASES[case](g)
    assert mlp_layers(model, data[0]) is not None
    center = {n: p.detach().clone() for n, p in model.named_parameters()}
    d1, d2 = random_directions(model, g), random_directions(model, g)
    alphas = torch.tensor([-1.3, -0.2, 0.0, 0.9], dtype=torch.float64)
    betas = torch.tensor([-1.0, 0.35, 2.0], dtype=torch.float64)
    grid = slice_2d(model, loss_fn, data, center, d1, d2, alphas, betas, method="affine",
                    chunk_size=chunk_size)
    ref = _loop(model, loss_fn, data, [{n: center[n] + a * d1[n] + b * d2[n] for n in center}
                                       for a in alphas.tolist() for b in betas.tolist()])
    # x (W + a D1 + b D2)^T against x W^T + a x D1^T + b x D2^T: the same sum in another order,
    # float64 rounding of a few terms of size O(1-10): 1e-12 relative is 4 orders of margin.
    torch.testing.assert_close(grid.reshape(-1), ref, rtol=1e-12, atol=1e-12)
    vmapped = slice_2d(model, loss_fn, data, center, d1, d2, alphas, betas, method="vmap")
    torch.testing.assert_close(grid, vmapped, rtol=1e-12, atol=1e-12)


def test_affine_interpolate_equals_loop():
    g = torch.Generator().manual_seed(4)
    model, data, loss_fn = _deep(g)
    a = {n: p.detach().clone() for n, p in model.named_parameters()}
    b = {n: p + torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in a.items()}
    alphas, losses = interpolate(model, loss_fn, data, a, b, num=6, method="affine")
    ref = _loop(model, loss_fn, data, [{n: a[n] + t * (b[n] - a[n]) for n in a}
                                       for t in alphas.tolist()])
    torch.testing.assert_close(losses, ref, rtol=1e-12, atol=1e-12)


class _Doubling(nn.Linear):  # a subclass may compute anything: never taken as nn.Linear
    def forward(self, x):
        return 2 * super().forward(x)


def _not_mlps(g):
    base = _deep(g)
    hooked = copy.deepcopy(base[0])
    hooked[2].register_forward_hook(lambda _m, _i, out: out + 1.0)
    sub = nn.Sequential(_Doubling(6, 9), nn.ReLU(), nn.Linear(9, 4)).double()
    dropout = nn.Sequential(nn.Linear(6, 9), nn.Dropout(0.5), nn.Linear(9, 4)).double().eval()
    norm = nn.Sequential(nn.Linear(6, 9), nn.BatchNorm1d(9), nn.Linear(9, 4)).double().eval()
    norm[1].running_mean.copy_(torch.randn(9, generator=g, dtype=torch.float64))
    shared_layer = nn.Linear(9, 9)
    shared = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), shared_layer, nn.Tanh(), shared_layer,
                           nn.Linear(9, 4)).double()
    return {"forward hook": hooked, "Linear subclass": sub, "Dropout": dropout,
            "BatchNorm (buffers)": norm, "a Linear used twice": shared}, base[1]


def test_auto_leaves_what_is_not_a_plain_mlp_to_vmap_and_stays_right():
    g = torch.Generator().manual_seed(5)
    models, data = _not_mlps(g)
    for what, model in models.items():
        assert mlp_layers(model, data[0]) is None, what
        center = {n: p.detach().clone() for n, p in model.named_parameters()}
        d1, d2 = random_directions(model, g), random_directions(model, g)
        grid = torch.tensor([-0.5, 0.5], dtype=torch.float64)
        with torch.no_grad():
            before = model(data[0])
        auto = slice_2d(model, F.mse_loss, data, center, d1, d2, grid, grid)
        ref = _loop(model, F.mse_loss, data, [{n: center[n] + a * d1[n] + b * d2[n]
                                               for n in center}
                                              for a in grid.tolist() for b in grid.tolist()])
        # The hook, the subclass's factor 2 and the buffers change the loss: auto must follow.
        torch.testing.assert_close(auto.reshape(-1), ref, rtol=1e-12, atol=1e-12, msg=what)
        # The model still works and is unchanged (a module used twice was left broken once).
        torch.testing.assert_close(model(data[0]), before, rtol=0, atol=0)
        with pytest.raises(ValueError, match=r"method='affine' needs an nn\.Sequential"):
            slice_2d(model, F.mse_loss, data, center, d1, d2, grid, grid, method="affine")


def test_inputs_not_two_dimensional_are_not_affine():
    g = torch.Generator().manual_seed(6)
    model, (x, _), _ = _deep(g)
    assert mlp_layers(model, x[None]) is None


def test_unknown_method_is_refused():
    g = torch.Generator().manual_seed(7)
    model, data, loss_fn = _linear(g)
    c = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="Invalid method: 'fast'"):
        slice_2d(model, loss_fn, data, c, c, c, [0.0, 1.0], [0.0, 1.0], method="fast")


@pytest.mark.parametrize("method", ["affine", "vmap"])
def test_loss_that_is_not_a_scalar_is_refused(method):
    g = torch.Generator().manual_seed(8)
    model, data, _ = _deep(g)
    c = {n: p.detach().clone() for n, p in model.named_parameters()}
    per_example = lambda out, y: F.mse_loss(out, y, reduction="none").mean(1)  # noqa: E731
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar .* got size \[30\]"):
        slice_2d(model, per_example, data, c, c, c, [0.0, 1.0], [0.0, 1.0], method=method)
