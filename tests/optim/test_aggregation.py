"""Mechanism A: the aggregation formula against a direct per-example computation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from synaprune import PerExampleGradStats, SynaPrune
from synaprune.optim import aggregate, cancellation
from synaprune.optim.schedules import blend_weight


def _per_example(seed: int = 0, b: int = 7, n: int = 11) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    per = torch.randn(b, n, generator=g, dtype=torch.float64)
    per[:, 0] = 1.0  # one coordinate where every example agrees: c = 1, rms = mean
    per[:, 1] = torch.tensor([1.0, -1.0] * (b // 2) + [0.0] * (b % 2), dtype=torch.float64)
    return per


@pytest.mark.parametrize("lam", [0.0, 0.25, 1.0], ids=["mean", "blend-0.25", "rms"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_blend_formula_matches_direct_computation(lam, reduction):
    per = _per_example()
    b = per.shape[0]
    gbar = per.mean(0)
    r = per.pow(2).mean(0).sqrt()
    expected = gbar + lam * torch.sign(gbar) * (r - gbar.abs())
    grad = gbar if reduction == "mean" else per.sum(0)
    scale = 1.0 if reduction == "mean" else b
    d = aggregate(grad.clone(), per.pow(2).sum(0), b, lam=lam, reduction=reduction)
    torch.testing.assert_close(d, scale * expected, rtol=1e-12, atol=1e-15)


def test_blend_acts_on_data_gradient_and_keeps_extra_gradient():
    per = _per_example(1)
    b = per.shape[0]
    extra = torch.linspace(-1, 1, per.shape[1], dtype=torch.float64)
    gbar = per.mean(0)
    r = per.pow(2).mean(0).sqrt()
    expected = gbar + 0.5 * torch.sign(gbar) * (r - gbar.abs()) + extra
    d = aggregate(gbar + extra, per.pow(2).sum(0), b, lam=0.5, reduction="mean", extra=extra)
    torch.testing.assert_close(d, expected, rtol=1e-12, atol=1e-15)


def test_rms_is_never_smaller_than_mean():
    per = _per_example(2)
    d = aggregate(per.mean(0), per.pow(2).sum(0), per.shape[0], lam=1.0, reduction="mean")
    assert torch.all(d.abs() >= per.mean(0).abs() - 1e-15)


def test_cancellation_is_one_where_examples_agree_and_zero_where_they_cancel():
    per = _per_example(3, b=6)
    c = cancellation(per.mean(0), per.pow(2).sum(0), per.shape[0])
    expected = per.mean(0).abs() / per.pow(2).mean(0).sqrt()
    torch.testing.assert_close(c, expected, rtol=1e-12, atol=1e-15)
    # Exact: coordinate 0 holds seven 1.0s (sum 7, mean 1, rms 1), coordinate 1 pairs of +-1
    # (sum exactly 0), all exactly representable whatever the summation order.
    assert c[0] == 1.0 and c[1] == 0.0
    zero = torch.zeros(3, dtype=torch.float64)
    assert torch.equal(cancellation(zero, zero, 4), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_blend_schedule(schedule):
    values = [blend_weight(0.8, t, schedule=schedule, steps=10) for t in range(15)]
    assert values[0] == pytest.approx(0.8)
    if schedule == "constant":
        assert all(v == 0.8 for v in values)
    else:
        assert all(a >= b for a, b in itertools.pairwise(values))
        assert values[10:] == [pytest.approx(0.0, abs=1e-15)] * 5
        assert values[5] == pytest.approx(0.4)  # both schedules are half way at half time


def _cancelling_problem():
    """Linear model y = w.x; examples' gradients nearly cancel in w[0] and agree in w[1]."""
    x = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, 1.0], [-1.02, 1.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [1.0], [1.0], [1.0]], dtype=torch.float64)
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    return model, x, y


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_rms_moves_a_cancelling_coordinate_by_about_r_where_mean_barely_moves(reduction):
    lr = 0.1
    moves = {}
    for aggregation in ("mean", "rms"):
        model, x, y = _cancelling_problem()
        stats = PerExampleGradStats(model, reduction=reduction)
        opt = SynaPrune(model.parameters(), lr=lr, aggregation=aggregation)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y, reduction=reduction).backward()
        opt.step()
        stats.remove()
        moves[aggregation] = -model.weight.detach()[0]
    # Direct: l_i = (w.x_i - y_i)^2, g_i = 2 (w.x_i - y_i) x_i = -2 x_i at w = 0.
    _, x, y = _cancelling_problem()
    per = -2.0 * x
    scale = 1.0 if reduction == "mean" else x.shape[0]
    gbar, r = per.mean(0), per.pow(2).mean(0).sqrt()
    torch.testing.assert_close(moves["mean"], lr * scale * gbar, rtol=1e-12, atol=0)
    torch.testing.assert_close(moves["rms"], lr * scale * torch.sign(gbar) * r, rtol=1e-12,
                               atol=0)
    # The outcome: in the cancelling coordinate mean moves 1% of what rms moves.
    assert moves["mean"][0].abs() < 0.01 * moves["rms"][0].abs()
    assert moves["rms"][0].abs() == pytest.approx(lr * scale * r[0].item(), rel=1e-12)
    # Where the examples agree, both move alike.
    assert moves["mean"][1] == pytest.approx(moves["rms"][1].item(), rel=1e-12)


def test_decayed_blend_returns_to_mean():
    """After blend_steps a linear schedule reproduces plain SGD steps exactly."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    model = nn.Linear(3, 1).double()
    stats = PerExampleGradStats(model)
    opt = SynaPrune(model.parameters(), lr=0.05, aggregation="rms", blend_schedule="linear",
                    blend_steps=5)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    expected = [b.add(p.grad, alpha=-0.05) for b, p in zip(before, model.parameters(), strict=True)]
    opt.step()
    stats.remove()
    for e, p in zip(expected, model.parameters(), strict=True):
        assert torch.equal(e, p.detach())


# -- what the user does to .grad between backward and step acts on the direction -------------------

LR = 0.1


def _mlp_and_batch(seed: int = 0, b: int = 6):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    g = torch.Generator().manual_seed(seed + 1)
    return (model, torch.randn(b, 3, generator=g, dtype=torch.float64),
            torch.randn(b, 2, generator=g, dtype=torch.float64))


def _directions(model, x, y, lam):
    """The blend(lam) direction of every parameter from a per-example loop, with gbar."""
    params = list(model.parameters())
    per = [[] for _ in params]
    for i in range(x.shape[0]):
        li = nn.functional.mse_loss(model(x[i:i + 1]), y[i:i + 1])
        for acc, g in zip(per, torch.autograd.grad(li, params), strict=True):
            acc.append(g)
    out = []
    for acc in per:
        gi = torch.stack(acc)
        gbar, r = gi.mean(0), gi.square().mean(0).sqrt()
        out.append((gbar + lam * torch.sign(gbar) * (r - gbar.abs()), gbar))
    return out


def _assert_steps(model, before, expected):
    for p, b, d in zip(model.parameters(), before, expected, strict=True):
        # float64 rounding of a few sums and one sqrt: far below any missed factor
        torch.testing.assert_close(b - p.detach(), LR * d, rtol=1e-10, atol=1e-15)


AGGREGATIONS_LAM = {"rms": (dict(aggregation="rms"), 1.0),
                    "blend": (dict(aggregation="blend", blend=0.4), 0.4)}


@pytest.mark.parametrize("name", AGGREGATIONS_LAM)
def test_clip_grad_norm_scales_the_aggregated_direction(name):
    options, lam = AGGREGATIONS_LAM[name]
    model, x, y = _mlp_and_batch()
    ref = _directions(model, x, y, lam)
    total = torch.sqrt(sum(gbar.square().sum() for _, gbar in ref))
    k = 1e-6 / (total + 1e-6)  # torch's clip coefficient
    stats = PerExampleGradStats(model)
    opt = SynaPrune(model.parameters(), lr=LR, **options)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-6)
    opt.step()
    stats.remove()
    _assert_steps(model, before, [k * d for d, _ in ref])


@pytest.mark.parametrize("name", AGGREGATIONS_LAM)
def test_grad_scaler_steps_as_without_loss_scaling(name):
    options, lam = AGGREGATIONS_LAM[name]
    model, x, y = _mlp_and_batch()
    ref = _directions(model, x, y, lam)
    stats = PerExampleGradStats(model)
    opt = SynaPrune(model.parameters(), lr=LR, **options)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
    scaler.step(opt)
    scaler.update()
    stats.remove()
    _assert_steps(model, before, [d for d, _ in ref])


@pytest.mark.parametrize("set_to_none", [True, False])
def test_grad_scaler_skipped_inf_step_leaves_nothing_stale(set_to_none):
    """An inf gradient: GradScaler skips the optimizer's step; after model.zero_grad() the next
    step is the next batch's alone."""
    model, x, y = _mlp_and_batch()
    _, x2, y2 = _mlp_and_batch(seed=5)
    ref = _directions(model, x2, y2, 1.0)
    stats = PerExampleGradStats(model)
    opt = SynaPrune(model.parameters(), lr=LR, aggregation="rms")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    bad = x.clone()
    bad[0, 0] = math.inf
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(nn.functional.mse_loss(model(bad), y)).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 512.0  # the step was skipped, the scale halved
    assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before,
                                                          strict=True))
    model.zero_grad(set_to_none=set_to_none)
    scaler.scale(nn.functional.mse_loss(model(x2), y2)).backward()
    scaler.step(opt)
    scaler.update()
    stats.remove()
    _assert_steps(model, before, [d for d, _ in ref])


@pytest.mark.parametrize("how", ["in_place", "assigned"])
def test_manual_rescale_of_grad_scales_the_direction(how):
    model, x, y = _mlp_and_batch()
    ref = _directions(model, x, y, 0.4)
    stats = PerExampleGradStats(model)
    opt = SynaPrune(model.parameters(), lr=LR, aggregation="blend", blend=0.4)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    for p in model.parameters():
        if how == "in_place":
            p.grad.mul_(-0.25)
        else:
            p.grad = p.grad * -0.25
    opt.step()
    stats.remove()
    _assert_steps(model, before, [-0.25 * d for d, _ in ref])


def _accumulated_step(aggregation: str, chunks: tuple[int, ...],
                      divide: bool) -> list[torch.Tensor]:
    """One SynaPrune step after back-propagating the mean loss of each chunk of one batch of 8
    (divided by the number of chunks when ``divide``, as Lightning's accumulate_grad_batches)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    probe = PerExampleGradStats(model)
    kwargs = {"blend": 0.4} if aggregation == "blend" else {}
    opt = SynaPrune(model.parameters(), lr=0.1, aggregation=aggregation, **kwargs)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randn(8, 1, generator=g, dtype=torch.float64)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    for xs, ys in zip(x.split(list(chunks)), y.split(list(chunks)), strict=True):
        loss = nn.functional.mse_loss(model(xs), ys)
        (loss / len(chunks) if divide else loss).backward()
    opt.step()
    probe.remove()
    return [b - p.detach() for b, p in zip(before, model.parameters(), strict=True)]


@pytest.mark.parametrize("aggregation", ["rms", "blend"])
@pytest.mark.parametrize("passes", [2, 4])
def test_accumulated_micro_batches_scale_the_direction_as_they_scale_grad(aggregation, passes):
    """P equal micro-batches whose losses are divided by P give .grad of the whole batch, so the
    step equals one batch's; undivided, .grad is P times that, and so is the step (it was 1/P of
    the right size, silently, with the division)."""
    whole = _accumulated_step(aggregation, (8,), divide=False)
    chunks = (8 // passes,) * passes
    divided = _accumulated_step(aggregation, chunks, divide=True)
    undivided = _accumulated_step(aggregation, chunks, divide=False)
    for w, d, u in zip(whole, divided, undivided, strict=True):
        # float64; the micro-batch sums run in another order than the whole batch's
        torch.testing.assert_close(d, w, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(u, passes * w, rtol=1e-12, atol=1e-15)


def test_mean_micro_batches_of_different_sizes_are_refused():
    with pytest.raises(RuntimeError, match="micro-batches of different sizes"):
        _accumulated_step("rms", (5, 3), divide=True)
