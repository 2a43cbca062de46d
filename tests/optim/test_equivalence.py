"""With every mechanism off, SynaPrune is torch.optim.SGD / torch.optim.Adam bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from synaprune import SynaPrune

SGD_CASES = {
    "plain": dict(lr=0.05),
    "momentum": dict(lr=0.05, momentum=0.9),
    "dampening": dict(lr=0.05, momentum=0.9, dampening=0.3),
    "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
    "weight-decay": dict(lr=0.05, momentum=0.5, weight_decay=1e-2),
    "nesterov-weight-decay": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
}
ADAM_CASES = {
    "default": dict(lr=1e-2),
    "betas-eps": dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6),
    "weight-decay": dict(lr=1e-2, weight_decay=1e-2),
    "amsgrad": dict(lr=1e-2, amsgrad=True),
}


def _problem(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
    x = torch.randn(64, 5, generator=g, dtype=dtype)
    y = torch.randn(64, 3, generator=g, dtype=dtype)
    return model, x, y


def _train(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
           steps: int, scheduler_cls=None) -> list[torch.Tensor]:
    sched = scheduler_cls(opt) if scheduler_cls else None
    for i in range(steps):
        opt.zero_grad()
        xb, yb = x[(i % 4) * 16:(i % 4 + 1) * 16], y[(i % 4) * 16:(i % 4 + 1) * 16]
        nn.functional.mse_loss(model(xb), yb).backward()
        opt.step()
        if sched:
            sched.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("options", SGD_CASES.values(), ids=SGD_CASES.keys())
def test_matches_torch_sgd_exactly(options):
    model, x, y = _problem()
    twin = copy.deepcopy(model)
    ours = _train(model, SynaPrune(model.parameters(), **options), x, y, 200)
    ref = _train(twin, torch.optim.SGD(twin.parameters(), **options), x, y, 200)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("options", ADAM_CASES.values(), ids=ADAM_CASES.keys())
def test_matches_torch_adam_exactly(options):
    model, x, y = _problem()
    twin = copy.deepcopy(model)
    ours = _train(model, SynaPrune(model.parameters(), base="adam", **options), x, y, 200)
    ref = _train(twin, torch.optim.Adam(twin.parameters(), **options), x, y, 200)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)


def test_param_groups_and_lr_scheduler_match_torch():
    model, x, y = _problem()
    twin = copy.deepcopy(model)

    def groups(m):
        return [{"params": m[0].parameters(), "lr": 0.1},
                {"params": m[2].parameters(), "momentum": 0.5}]

    def sched(o):
        return torch.optim.lr_scheduler.StepLR(o, step_size=20, gamma=0.5)

    ours = _train(model, SynaPrune(groups(model), lr=0.05, momentum=0.9), x, y, 100, sched)
    ref = _train(twin, torch.optim.SGD(groups(twin), lr=0.05, momentum=0.9), x, y, 100, sched)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)


def test_closure_returns_loss():
    model, x, y = _problem()
    opt = SynaPrune(model.parameters(), lr=0.1)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    before = nn.functional.mse_loss(model(x), y).item()
    returned = opt.step(closure)
    assert returned.item() == pytest.approx(before)
    assert nn.functional.mse_loss(model(x), y).item() < before
