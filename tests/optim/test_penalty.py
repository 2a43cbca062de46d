"""Mechanism C: the activation-gradient penalty and the weight stabiliser."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from synaprune import ActivationGradientPenalty, PerExampleGradStats, SynaPrune
from synaprune.optim.penalty import activation_term, stabiliser, weight_norms


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(),
                         nn.Linear(4, 2)).double()


def _data(seed: int = 1, b: int = 6):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, generator=g, dtype=torch.float64),
            torch.randn(b, 2, generator=g, dtype=torch.float64))


def _reference_penalised_loss(model, x, y, beta, gamma, init_norms):
    """Per-example loop: L + beta/B sum_i sum_l ||d l_i/d h_{l,i}||^2 + stabiliser."""
    b = x.shape[0]
    data, act = 0.0, 0.0
    for i in range(b):
        h1 = model[1](model[0](x[i:i + 1]))
        h2 = model[3](model[2](h1))
        li = nn.functional.mse_loss(model[4](h2), y[i:i + 1], reduction="sum")
        g1, g2 = torch.autograd.grad(li, (h1, h2), create_graph=True)
        data = data + li / b
        act = act + g1.pow(2).sum() + g2.pow(2).sum()
    weights = [model[0].weight, model[2].weight, model[4].weight]
    stab = sum(torch.relu(c - w.norm()) ** 2 for w, c in zip(weights, init_norms, strict=True))
    return data, beta * act / b, gamma * stab


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_penalty_value_and_gradient_match_per_example_reference(reduction):
    beta, gamma = 0.3, 2.0
    model = _model()
    init_norms = [m.weight.norm().item() for m in (model[0], model[2], model[4])]
    penalty = ActivationGradientPenalty(model, beta=beta, gamma=gamma, reduction=reduction)
    with torch.no_grad():  # shrink one layer so the stabiliser is active
        model[2].weight.mul_(0.5)
    x, y = _data()
    # mse per example summed over outputs; "mean" divides by B only.
    loss = nn.functional.mse_loss(model(x), y, reduction="sum")
    if reduction == "mean":
        loss = loss / x.shape[0]
    total = penalty(loss)
    total.backward()
    ours = [p.grad.clone() for p in model.parameters()]
    extra = [p.grad_extra.clone() for p in model.parameters()]

    data, act, stab = _reference_penalised_loss(model, x, y, beta, gamma, init_norms)
    scale = 1.0 if reduction == "mean" else x.shape[0]
    assert penalty.last_penalty == pytest.approx(act.item() * scale, rel=1e-12)
    assert penalty.last_stabiliser == pytest.approx(stab.item(), rel=1e-12)
    assert stab.item() > 0
    assert total.item() == pytest.approx((scale * data + scale * act + stab).item(), rel=1e-12)
    params = list(model.parameters())
    ref_total = torch.autograd.grad(scale * data + scale * act + stab, params,
                                    retain_graph=True)
    ref_extra = torch.autograd.grad(scale * act + stab, params)
    for a, b in zip(ours, ref_total, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(extra, ref_extra, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_stabiliser_is_zero_at_initialisation_and_penalty_keeps_probe_on_data_loss():
    model = _model()
    stats = PerExampleGradStats(model)
    penalty = ActivationGradientPenalty(model, beta=0.5, gamma=1.0)
    x, y = _data()
    penalty(nn.functional.mse_loss(model(x), y)).backward()
    # Exact: c_l is the norm of the same tensor computed by the same op, so relu(c_l - ||W_l||) = 0.
    assert penalty.last_stabiliser == 0.0
    with_penalty = [p.grad_sumsq.clone() for p in model.parameters()]
    stats.zero()
    for p in model.parameters():
        p.grad = None
    nn.functional.mse_loss(model(x), y).backward()
    stats.remove()
    for a, p in zip(with_penalty, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad_sumsq, rtol=1e-12, atol=0)


def test_penalty_moves_parameters_where_the_batch_gradient_is_exactly_zero():
    """Two copies of one input with targets f(x) + 1 and f(x) - 1: every per-example gradient
    cancels exactly, so plain GD cannot move; the per-example activation gradients do not cancel.
    """
    model = _model(3)
    x = torch.randn(1, 3, dtype=torch.float64).repeat(2, 1)
    with torch.no_grad():
        f = model(x[:1])
    y = torch.cat([f + 1.0, f - 1.0])
    for beta, should_move in ((0.0, False), (0.1, True)):
        m = _model(3)
        start = [p.detach().clone() for p in m.parameters()]
        opt = SynaPrune(m.parameters(), lr=0.1)
        penalty = ActivationGradientPenalty(m, beta=beta) if beta else None
        for _ in range(5):
            opt.zero_grad()
            loss = nn.functional.mse_loss(m(x), y)
            (penalty(loss) if penalty else loss).backward()
            opt.step()
        moved = max((p.detach() - s).abs().max().item()
                    for p, s in zip(m.parameters(), start, strict=True))
        assert (moved > 1e-3) == should_move, (beta, moved)


def test_bad_options_and_missing_forward():
    model = _model()
    with pytest.raises(ValueError, match="beta"):
        ActivationGradientPenalty(model, beta=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        ActivationGradientPenalty(model, beta=1.0, gamma=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        ActivationGradientPenalty(model, beta=1.0, reduction="max")
    with pytest.raises(ValueError, match="hidden layers"):
        ActivationGradientPenalty(nn.Linear(2, 2), beta=1.0)
    penalty = ActivationGradientPenalty(model, beta=1.0)
    with pytest.raises(RuntimeError, match="forward"):
        penalty(torch.tensor(1.0, requires_grad=True))


def test_stabiliser_without_weights_is_zero_and_the_penalty_still_works() -> None:
    """A model with no Linear/Conv weight (named hidden module) gives a zero stabiliser."""

    class Bumps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.centres = nn.Parameter(torch.tensor([-1.0, 0.5], dtype=torch.float64))
            self.act = nn.Tanh()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(x - self.centres).sum(dim=1, keepdim=True)

    model = Bumps()
    penalty = ActivationGradientPenalty(model, beta=0.1, gamma=1.0)
    assert penalty.weights == [] and float(penalty.stabiliser()) == 0.0
    x = torch.linspace(-2, 2, 6, dtype=torch.float64).unsqueeze(1)
    y = torch.zeros(6, 1, dtype=torch.float64)
    penalty(nn.functional.mse_loss(model(x), y)).backward()
    # reference: the penalised loss by hand, through autograd
    c = model.centres.detach().clone().requires_grad_(True)
    h = torch.tanh(x - c)
    loss = (h.sum(dim=1, keepdim=True) - y).square().mean()
    (dh,) = torch.autograd.grad(loss, h, create_graph=True)
    total = loss + 0.1 * x.shape[0] * dh.square().sum()
    (expected,) = torch.autograd.grad(total, c)
    torch.testing.assert_close(model.centres.grad, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_penalty_math_for_stacked_models_is_the_one_model_math_per_slice(reduction) -> None:
    """activation_term and stabiliser with num_models=S (the lab's seed batching) give model s
    exactly what the one-model call on slice s gives: one implementation for both."""
    g = torch.Generator().manual_seed(4)
    s = 3
    grads = [torch.randn(s, 6, 5, generator=g, dtype=torch.float64), None,
             torch.randn(s, 6, 2, 3, generator=g, dtype=torch.float64)]
    weights = [torch.randn(s, 4, 3, generator=g, dtype=torch.float64),
               torch.randn(s, 2, generator=g, dtype=torch.float64)]
    init = weight_norms([w * 1.3 for w in weights], num_models=s)  # above: the stabiliser acts
    stacked_act = activation_term(grads, reduction=reduction, num_models=s)
    stacked_stab = stabiliser(weights, init, 0.7, num_models=s)
    assert stacked_act.shape == (s,) and stacked_stab.shape == (s,)
    for m in range(s):
        one = [None if t is None else t[m] for t in grads]
        act = activation_term(one, reduction=reduction)
        # reference: sum over layers of (B or 1) * ||dL/dh||^2
        ref = sum((6 if reduction == "mean" else 1) * t[m].pow(2).sum()
                  for t in grads if t is not None)
        assert abs(act.item() - ref.item()) <= 1e-12 * ref.item()
        assert abs(stacked_act[m].item() - act.item()) <= 1e-12 * act.item()
        stab = stabiliser([w[m] for w in weights], [c[m].item() for c in init], 0.7)
        ref_stab = 0.7 * sum(torch.relu(c[m] - w[m].norm()) ** 2
                             for w, c in zip(weights, init, strict=True))
        assert stab.item() > 0 and abs(stab.item() - ref_stab.item()) <= 1e-12 * ref_stab.item()
        assert abs(stacked_stab[m].item() - stab.item()) <= 1e-12 * stab.item()


def _reference_direction(model, x, y, beta, gamma, init_norms, lam):
    """blend(lam) of the data loss's per-example gradients plus the penalty's gradient, from a
    per-example loop: l_i = mse of example i (mean over outputs), L = (1/B) sum_i l_i."""
    b = x.shape[0]
    params = list(model.parameters())
    per, act = [], 0.0
    for i in range(b):
        h1 = model[1](model[0](x[i:i + 1]))
        h2 = model[3](model[2](h1))
        li = nn.functional.mse_loss(model[4](h2), y[i:i + 1])
        per.append(torch.autograd.grad(li, params, retain_graph=True))
        g1, g2 = torch.autograd.grad(li, (h1, h2), create_graph=True)
        act = act + g1.pow(2).sum() + g2.pow(2).sum()
    weights = [model[0].weight, model[2].weight, model[4].weight]
    stab = sum(torch.relu(c - w.norm()) ** 2 for w, c in zip(weights, init_norms, strict=True))
    extra = torch.autograd.grad(beta * act / b + gamma * stab, params)
    out = []
    for j, e in enumerate(extra):
        gi = torch.stack([g[j] for g in per])
        gbar, r = gi.mean(0), gi.square().mean(0).sqrt()
        out.append(gbar + lam * torch.sign(gbar) * (r - gbar.abs()) + e)
    return out


ORDERS = ["readme", "lightning", "lightning_model_zero_grad", "grad_scaler"]


@pytest.mark.parametrize("order", ORDERS)
def test_penalty_with_blend_matches_the_reference_in_every_training_loop_order(order):
    """README: zero_grad, penalty(loss).backward(), step. Lightning: training_step builds
    penalty(loss), then zero_grad, then backward, then step (the statistics used to be wiped).
    With a GradScaler: the scaled backward, then scaler.step."""
    beta, gamma, lam, lr = 0.3, 2.0, 0.5, 0.05
    model = _model()
    init_norms = [m.weight.norm().item() for m in (model[0], model[2], model[4])]
    stats = PerExampleGradStats(model)
    penalty = ActivationGradientPenalty(model, beta=beta, gamma=gamma)
    opt = SynaPrune(model.parameters(), lr=lr, aggregation="blend", blend=lam)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with torch.no_grad():  # shrink one layer so the stabiliser is active
        model[2].weight.mul_(0.5)
    for step in range(2):
        x, y = _data(seed=10 + step)
        expected = _reference_direction(model, x, y, beta, gamma, init_norms, lam)
        before = [p.detach().clone() for p in model.parameters()]
        if order == "readme":
            opt.zero_grad()
            penalty(nn.functional.mse_loss(model(x), y)).backward()
            opt.step()
        elif order == "grad_scaler":
            opt.zero_grad()
            scaler.scale(penalty(nn.functional.mse_loss(model(x), y))).backward()
            scaler.step(opt)
            scaler.update()
        else:
            total = penalty(nn.functional.mse_loss(model(x), y))
            (opt if order == "lightning" else model).zero_grad()
            total.backward()
            opt.step()
        for p, b, d in zip(model.parameters(), before, expected, strict=True):
            # float64 rounding of per-example sums and a double backward
            torch.testing.assert_close(b - p.detach(), lr * d, rtol=1e-9, atol=1e-14)
    stats.remove()
