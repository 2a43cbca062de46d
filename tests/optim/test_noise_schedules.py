"""Mechanism B relative to the budget: linear and cosine decay to 0, the isotropic ablation,
the loss guard; each against a hand-computed float64 reference of the trajectory."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from synaprune import SynaPrune
from synaprune.optim.noise import noise_scale_of
from synaprune.optim.schedules import noise_scale


def _sigma(schedule: str, sigma0: float, t: int, steps: int) -> float:
    # Written out from the definition, independently of synaprune.optim.schedules.
    if t >= steps:
        return 0.0
    if schedule == "linear":
        return sigma0 * (steps - t) / steps
    return sigma0 * (1.0 + math.cos(math.pi * t / steps)) / 2.0


def _bowl(theta: torch.Tensor) -> torch.Tensor:
    """Gradient of 0.5 * sum(c_i theta_i**2), c_i = 1..n: a deterministic update to follow."""
    return torch.arange(1, theta.numel() + 1, dtype=theta.dtype).view_as(theta) * theta


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("shape", ["magnitude", "isotropic"])
def test_trajectory_matches_a_float64_reference(schedule: str, shape: str) -> None:
    """GD plus the kick, step by step, for T = 5 noisy steps and 3 quiet ones: the same numbers
    as the loop below, and no noise drawn once sigma_t = 0 (the generator stops advancing)."""
    lr, sigma0, steps, eps0 = 0.05, 0.3, 5, 1e-3
    theta0 = torch.tensor([[0.5, -1.0, 0.0], [2.0, 1e-4, -0.3]], dtype=torch.float64)
    p = nn.Parameter(theta0.clone())
    opt = SynaPrune([p], lr=lr, noise=sigma0, noise_schedule=schedule, noise_steps=steps,
                    noise_eps=eps0, noise_shape=shape, seed=11)
    gen = torch.Generator().manual_seed(11)
    ref = theta0.clone()
    for t in range(steps + 3):
        p.grad = _bowl(p.detach())
        opt.step()
        ref = ref - lr * _bowl(ref)
        sigma = _sigma(schedule, sigma0, t, steps)
        assert noise_scale(sigma0, t, schedule=schedule, decay=1.0, gamma=0.0,
                           steps=steps) == pytest.approx(sigma, rel=1e-15, abs=0)
        if sigma > 0:
            xi = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
            if shape == "magnitude":
                scale = ref.abs() + eps0
            else:  # one rms for the tensor: sqrt(mean (|theta| + eps0)^2)
                scale = torch.full_like(ref, math.sqrt(((ref.abs() + eps0) ** 2).mean().item()))
            ref = ref + sigma * scale * xi
        torch.testing.assert_close(p.detach(), ref, rtol=1e-13, atol=1e-15)
    # No draws after T: the optimizer's generator is where the reference's is.
    assert torch.equal(opt.generators[0].get_state(), gen.get_state())


def test_sigma_is_exactly_zero_from_noise_steps_on() -> None:
    for schedule in ("linear", "cosine"):
        values = [noise_scale(0.2, t, schedule=schedule, decay=1.0, gamma=0.0, steps=7)
                  for t in range(12)]
        assert values[0] == 0.2 and all(v == 0.0 for v in values[7:])
        assert all(a > b for a, b in itertools.pairwise(values[:8]))


def test_isotropic_scale_has_the_magnitude_scale_energy() -> None:
    """sum_i s_i^2 equal for both shapes (so E||sigma s xi||^2 equal), per tensor; the isotropic
    scale is one number; checked on weights of very different magnitudes, deterministically."""
    theta = torch.tensor([3.0, -1e-6, 0.0, 0.25, -40.0], dtype=torch.float64)
    eps0 = 1e-2
    mag = noise_scale_of(theta, eps0, "magnitude")
    iso = noise_scale_of(theta, eps0, "isotropic")
    energy = sum((abs(v) + eps0) ** 2 for v in theta.tolist())  # by hand
    assert mag.square().sum().item() == pytest.approx(energy, rel=1e-14)
    assert iso.square().sum().item() == pytest.approx(energy, rel=1e-14)
    assert torch.all(iso == iso[0])
    # Through the optimizer: the kick / xi ratio is the scale (xi replayed from the seed).
    for shape, scale in (("magnitude", mag), ("isotropic", iso)):
        p = nn.Parameter(theta.clone())
        opt = SynaPrune([p], lr=0.0, noise=0.1, noise_eps=eps0, noise_shape=shape, seed=3)
        p.grad = torch.zeros_like(p)
        opt.step()
        xi = torch.randn(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        torch.testing.assert_close(p.detach() - theta, 0.1 * scale * xi, rtol=1e-13, atol=0)


def test_isotropic_rms_is_per_tensor_not_global() -> None:
    big = nn.Parameter(torch.full((4,), 10.0, dtype=torch.float64))
    small = nn.Parameter(torch.full((4,), 0.01, dtype=torch.float64))
    opt = SynaPrune([big, small], lr=0.0, noise=0.1, noise_eps=0.0, noise_shape="isotropic",
                    seed=0)
    big.grad, small.grad = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    opt.step()
    gen = torch.Generator().manual_seed(0)
    xi_big = torch.randn(4, generator=gen, dtype=torch.float64)
    xi_small = torch.randn(4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(big.detach(), 10.0 + 0.1 * 10.0 * xi_big, rtol=1e-14, atol=0)
    torch.testing.assert_close(small.detach(), 0.01 + 0.1 * 0.01 * xi_small, rtol=1e-14, atol=0)


# -- the loss guard --------------------------------------------------------------------------

def _quadratic_loss(p: torch.Tensor) -> torch.Tensor:
    return 0.5 * (p**2).sum(-1)


def test_guard_undoes_exactly_the_kicks_that_raise_the_loss_past_the_bound() -> None:
    """Reference: update, kick, compare L(kicked) with (1 + r) L(updated), restore if above."""
    lr, sigma0, r = 0.1, 0.5, 0.2
    theta0 = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    p = nn.Parameter(theta0.clone())
    opt = SynaPrune([p], lr=lr, noise=sigma0, noise_guard=r, noise_eps=0.0, seed=5)
    gen = torch.Generator().manual_seed(5)
    ref, undone = theta0.clone(), 0
    for _ in range(30):
        p.grad = p.detach().clone()
        opt.step(guard=lambda: _quadratic_loss(p))
        ref = ref - lr * ref
        xi = torch.randn(3, generator=gen, dtype=torch.float64)
        kicked = ref + sigma0 * ref.abs() * xi
        if _quadratic_loss(kicked) > (1 + r) * _quadratic_loss(ref):
            undone += 1
        else:
            ref = kicked
        torch.testing.assert_close(p.detach(), ref, rtol=1e-14, atol=0)
    assert 0 < undone < 30 and opt.rejected == [undone]  # both branches were taken


def test_guard_undoes_a_non_finite_loss_and_is_required_and_refused_where_unused() -> None:
    p = nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = SynaPrune([p], lr=0.0, noise=0.1, noise_guard=1.0, seed=0)
    p.grad = torch.zeros_like(p)
    calls = iter([1.0, math.nan])
    opt.step(guard=lambda: next(calls))
    assert torch.equal(p.detach(), torch.ones(2, dtype=torch.float64)) and opt.rejected == [1]
    with pytest.raises(RuntimeError, match="noise_guard needs the loss"):
        opt.step()
    plain = SynaPrune([p], lr=0.0, noise=0.1, seed=0)
    with pytest.raises(ValueError, match="only used with noise_guard"):
        plain.step(guard=lambda: 1.0)
    with pytest.raises(ValueError, match=r"noise_guard.*noise=0"):
        SynaPrune([p], lr=0.1, noise_guard=1.0)


def test_guard_no_evaluation_once_sigma_is_zero() -> None:
    """The guard costs nothing once the schedule has reached 0 (measured cost relies on it)."""
    p = nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = SynaPrune([p], lr=0.1, noise=0.1, noise_schedule="linear", noise_steps=3,
                    noise_guard=1.0, seed=0)
    calls = []
    for _ in range(6):
        p.grad = p.detach().clone()
        opt.step(guard=lambda: calls.append(1) or _quadratic_loss(p))
    assert len(calls) == 2 * 3


@pytest.mark.parametrize(("options", "word"), [
    (dict(noise=0.1, noise_schedule="linear"), "needs noise_steps"),
    (dict(noise=0.1, noise_steps=10), "noise_steps with noise_schedule='constant'"),
    (dict(noise=0.1, noise_schedule="cosine", noise_steps=0), "Invalid noise_steps"),
    (dict(noise=0.1, noise_shape="gaussian"), "Invalid noise_shape"),
    (dict(noise_shape="isotropic"), "noise_shape with noise=0"),
    (dict(noise=0.1, noise_guard=0.0), "Invalid noise_guard"),
])
def test_bad_or_ineffective_options_are_refused(options: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        SynaPrune([nn.Parameter(torch.ones(1))], lr=0.1, **options)
