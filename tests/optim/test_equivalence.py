"""With every mechanism off, SynaPrune is torch.optim.SGD / Adam / AdamW bit for bit."""

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
ADAMW_CASES = {
    "default": dict(lr=1e-2),  # torch's default weight_decay=1e-2, decoupled
    "no-decay": dict(lr=1e-2, weight_decay=0.0),
    "strong-decay-betas-eps": dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.3),
    "amsgrad": dict(lr=1e-2, weight_decay=5e-2, amsgrad=True),
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


@pytest.mark.parametrize("options", ADAMW_CASES.values(), ids=ADAMW_CASES.keys())
def test_matches_torch_adamw_exactly(options):
    model, x, y = _problem()
    twin = copy.deepcopy(model)
    ours = _train(model, SynaPrune(model.parameters(), base="adamw", **options), x, y, 200)
    ref = _train(twin, torch.optim.AdamW(twin.parameters(), **options), x, y, 200)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)
    # the decay is really applied: without it, the parameters differ
    if options.get("weight_decay", 1e-2) > 0:
        model2, _, _ = _problem()
        plain = _train(model2, torch.optim.Adam(model2.parameters(), **{
            k: v for k, v in options.items() if k != "weight_decay"}), x, y, 200)
        assert not all(torch.equal(a, b) for a, b in zip(ours, plain, strict=True))


@pytest.mark.parametrize("base", ["adam", "adamw"])
def test_stacked_adam_bases_match_torch_per_model(base):
    """Stacked mode (num_models=S): model s of the stack follows torch's optimizer on model s
    alone, bit for bit (every operation of the Adam update is elementwise)."""
    s, steps = 3, 200
    g = torch.Generator().manual_seed(1)
    init = [torch.randn(s, 4, 2, generator=g), torch.randn(s, 5, generator=g)]
    targets = [torch.randn(s, 4, 2, generator=g), torch.randn(s, 5, generator=g)]
    reference = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[base]
    options = dict(lr=1e-2, weight_decay=0.1, amsgrad=True)

    def loss(params, goal):  # a quartic bowl: Adam's moments differ coordinate by coordinate
        return sum(((p - t) ** 4).sum() for p, t in zip(params, goal, strict=True))

    stacked = [torch.nn.Parameter(t.clone()) for t in init]
    opt = SynaPrune(stacked, base=base, num_models=s, **options)
    for _ in range(steps):
        opt.zero_grad()
        loss(stacked, targets).backward()
        opt.step()
    for m in range(s):
        single = [torch.nn.Parameter(t[m].clone()) for t in init]
        ref = reference(single, **options)
        for _ in range(steps):
            ref.zero_grad()
            loss(single, [t[m] for t in targets]).backward()
            ref.step()
        for ps, p1 in zip(stacked, single, strict=True):
            assert torch.equal(ps[m], p1)


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
