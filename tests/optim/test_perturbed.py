"""The noisy and sharpness-aware baselines: formulas by hand, stacked mode (``num_models``)
against single runs, resuming."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch

from synaprune.optim import SAM, GradientNoise, PerturbedGD

D = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- formulas against a direct computation ----------------------------------------------------


def test_perturbed_gd_kick_is_the_uniform_ball_sample_then_waits() -> None:
    a = torch.tensor([0.3, -0.2], dtype=D, requires_grad=True)
    b = torch.tensor([0.1], dtype=D, requires_grad=True)
    opt = PerturbedGD([a, b], lr=0.5, radius=0.2, threshold=1.0, t_thres=2, generator=_gen(7))
    a0, b0 = a.detach().clone(), b.detach().clone()
    # the grad norm ||(a, b)|| < 1 = threshold, so step 0 kicks; the step uses g at a0, b0
    (0.5 * (a.square().sum() + b.square().sum())).backward()
    opt.step()
    ref = _gen(7)
    za, zb = torch.randn(2, generator=ref, dtype=D), torch.randn(1, generator=ref, dtype=D)
    u = torch.rand((), generator=ref, dtype=D)
    scale = 0.2 * u ** (1 / 3) / torch.cat([za, zb]).norm()
    assert torch.allclose(a.detach(), a0 + scale * za - 0.5 * a0, atol=1e-15, rtol=0)
    assert torch.allclose(b.detach(), b0 + scale * zb - 0.5 * b0, atol=1e-15, rtol=0)
    assert 0 < (scale * torch.cat([za, zb])).norm() <= 0.2
    assert opt.extra["kicks"] == [1] and opt.extra["t_noise"] == [0]
    # steps 1 and 2 are within t_thres of the kick: plain gradient steps, nothing drawn
    state = opt.generators[0].get_state()
    for _ in range(2):
        opt.zero_grad()
        a1 = a.detach().clone()
        (0.5 * (a.square().sum() + b.square().sum())).backward()
        opt.step()
        assert torch.equal(a.detach(), a1 - 0.5 * a1)
    assert torch.equal(opt.generators[0].get_state(), state)
    opt.zero_grad()
    (0.5 * (a.square().sum() + b.square().sum())).backward()
    opt.step()  # t = 3 > t_noise + t_thres: kicks again
    assert opt.extra["kicks"] == [2] and opt.extra["t_noise"] == [3]


def test_perturbed_gd_does_not_kick_above_the_threshold() -> None:
    w = torch.tensor([3.0, 4.0], dtype=D, requires_grad=True)
    opt = PerturbedGD([w], lr=0.1, radius=1.0, threshold=4.9, t_thres=0, generator=_gen(0))
    w.square().sum().mul(0.5).backward()  # ||g|| = 5 > 4.9
    opt.step()
    assert torch.equal(w.detach(), torch.tensor([2.7, 3.6], dtype=D))
    assert opt.extra["kicks"] == [0]


def test_gradient_noise_is_sgd_on_the_annealed_noisy_gradient() -> None:
    w = torch.tensor([1.0, -2.0, 0.5], dtype=D, requires_grad=True)
    lr, eta, gamma, mu = 0.1, 0.3, 0.55, 0.5
    opt = GradientNoise([w], lr=lr, eta=eta, gamma=gamma, momentum=mu, generator=_gen(3))
    ref, expect, buf = _gen(3), w.detach().clone(), None
    for t in range(4):
        opt.zero_grad()
        w.sin().sum().backward()
        g = expect.cos()
        assert torch.allclose(w.grad, g, atol=1e-15, rtol=0)
        d = g + math.sqrt(eta / (1 + t) ** gamma) * torch.randn(3, generator=ref, dtype=D)
        buf = d if buf is None else mu * buf + d
        expect = expect - lr * buf
        opt.step()
        assert torch.allclose(w.grad, g)  # p.grad is left alone
        assert torch.allclose(w.detach(), expect, atol=1e-14, rtol=0)
    assert opt.sigma(0) == math.sqrt(eta)


def test_sam_steps_from_w_with_the_gradient_at_the_ascended_point() -> None:
    a_mat = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=D)
    w = torch.tensor([1.0, -1.0], dtype=D, requires_grad=True)
    b = torch.tensor([0.5], dtype=D, requires_grad=True)
    lr, rho = 0.1, 0.3

    def loss() -> torch.Tensor:
        return 0.5 * w @ a_mat @ w + b.pow(4).sum()

    opt = SAM([w, b], lr=lr, rho=rho)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    w0, b0 = w.detach().clone(), b.detach().clone()
    closure()
    got = opt.step(closure)
    g = torch.cat([a_mat @ w0, 4 * b0.pow(3)])
    e = rho * g / g.norm()
    w_e, b_e = w0 + e[:2], b0 + e[2:]
    assert got.item() == pytest.approx((0.5 * w_e @ a_mat @ w_e + b_e.pow(4).sum()).item())
    assert torch.allclose(w.detach(), w0 - lr * (a_mat @ w_e), atol=1e-15, rtol=0)
    assert torch.allclose(b.detach(), b0 - lr * 4 * b_e.pow(3), atol=1e-15, rtol=0)
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()


def test_sam_at_a_zero_gradient_does_not_ascend() -> None:
    w = torch.zeros(2, dtype=D, requires_grad=True)
    opt = SAM([w], lr=0.1, rho=0.5)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = w.square().sum()
        value.backward()
        return value

    closure()
    assert opt.step(closure).item() == 0.0
    assert torch.equal(w.detach(), torch.zeros(2, dtype=D))


# -- stacked mode: S models at once equal S single runs ---------------------------------------

S = 3
SEEDS = [11, 12, 13]


def _loss(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A small non-convex loss of one model: w [2, 3], b [2]."""
    return (torch.tanh(x @ w.T + b) - 0.5).square().mean() + 0.1 * w.pow(4).sum()


def _start() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = _gen(0)
    w = torch.randn(S, 2, 3, generator=g, dtype=D)
    b = torch.randn(S, 2, generator=g, dtype=D)
    x = torch.randn(S, 5, 3, generator=g, dtype=D)
    return w, b, x


def _n(gen) -> int | None:
    """num_models for a list of generators (stacked), None for one generator."""
    return len(gen) if isinstance(gen, list) else None


MAKERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    # threshold between the models' gradient norms: the models kick at different steps
    "perturbed-gd": lambda ps, gen: PerturbedGD(ps, lr=0.3, radius=0.3, threshold=0.3,
                                                t_thres=3, generator=gen, num_models=_n(gen)),
    "gradient-noise": lambda ps, gen: GradientNoise(ps, lr=0.2, eta=0.1, momentum=0.7,
                                                    generator=gen, num_models=_n(gen)),
    "sam": lambda ps, gen: SAM(ps, lr=0.3, rho=0.1, momentum=0.5, num_models=_n(gen)),
}


def _train(make: Callable[..., torch.optim.Optimizer], params: list[torch.Tensor],
           loss_fn: Callable[[], torch.Tensor], gen, steps: int,
           opt: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
    opt = opt if opt is not None else make(params, gen)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss_fn()
        value.backward()
        return value

    for _ in range(steps):
        closure()
        opt.step(closure)
    return opt


@pytest.mark.parametrize("name", list(MAKERS))
def test_stacked_equals_single_runs(name: str) -> None:
    make = MAKERS[name]
    w0, b0, x = _start()
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    opt = _train(make, [w, b], lambda: sum(_loss(w[s], b[s], x[s]) for s in range(S)),
                 [_gen(s) for s in SEEDS], 25)
    for s in range(S):
        ws, bs = w0[s].clone().requires_grad_(), b0[s].clone().requires_grad_()
        single = _train(make, [ws, bs], lambda ws=ws, bs=bs, s=s: _loss(ws, bs, x[s]),
                        _gen(SEEDS[s]), 25)
        assert (w[s] - ws).abs().max().item() <= 1e-12
        assert (b[s] - bs).abs().max().item() <= 1e-12
        assert torch.equal(opt.generators[s].get_state(), single.generators[0].get_state())
        for key, value in opt.extra.items():
            expect = single.extra[key]
            assert (value[s] if isinstance(value, list) else value) == (
                expect[0] if isinstance(expect, list) else expect)
    assert (w0 - w).abs().max() > 1e-3
    if name == "perturbed-gd":
        kicks = opt.extra["kicks"]
        assert min(kicks) > 0 and len(set(kicks)) > 1  # per-model stall decisions


@pytest.mark.parametrize("name", list(MAKERS))
def test_state_dict_resume_gives_the_identical_trajectory(name: str) -> None:
    make = MAKERS[name]
    w0, b0, x = _start()
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()

    def loss() -> torch.Tensor:
        return sum(_loss(w[s], b[s], x[s]) for s in range(S))  # type: ignore[return-value]

    opt = _train(make, [w, b], loss, [_gen(s) for s in SEEDS], 10)
    saved = copy.deepcopy(opt.state_dict())
    mid = (w.detach().clone(), b.detach().clone())
    _train(make, [w, b], loss, None, 15, opt)
    end = (w.detach().clone(), b.detach().clone())
    with torch.no_grad():
        w.copy_(mid[0])
        b.copy_(mid[1])
    fresh = make([w, b], [_gen(100 + s) for s in SEEDS])  # other generators: state restores
    fresh.load_state_dict(saved)
    _train(make, [w, b], loss, None, 15, fresh)
    assert torch.equal(w.detach(), end[0]) and torch.equal(b.detach(), end[1])
    with pytest.raises(ValueError, match="models"):
        two = [w[:2].detach().clone().requires_grad_(), b[:2].detach().clone().requires_grad_()]
        make(two, [_gen(0), _gen(1)]).load_state_dict(saved)


@pytest.mark.parametrize(
    ("make", "word"),
    [
        (lambda p: PerturbedGD(p, lr=-1.0), "learning rate"),
        (lambda p: PerturbedGD(p, radius=-0.1), "radius"),
        (lambda p: PerturbedGD(p, threshold=-1.0), "threshold"),
        (lambda p: PerturbedGD(p, t_thres=-1), "t_thres"),
        (lambda p: GradientNoise(p, eta=-1.0), "eta"),
        (lambda p: GradientNoise(p, gamma=float("nan")), "gamma"),
        (lambda p: GradientNoise(p, momentum=1.0), "momentum"),
        (lambda p: SAM(p, rho=-0.1), "rho"),
        (lambda p: SAM(p, lr=float("inf")), "learning rate"),
        (lambda p: SAM(p, num_models=3), "num_models=3 means stacked"),
        (lambda p: GradientNoise(p, generator=[]), "generator"),
        (lambda p: GradientNoise(p, generator=[_gen(0), _gen(1)]), "num_models=2"),
        (lambda p: PerturbedGD(p, num_models=2, generator=[_gen(0)]), "needs 2 generators"),
        (lambda p: PerturbedGD(p, num_models=2, generator=_gen(0)), "sequence"),
    ],
)
def test_invalid_options_raise_naming_them(make, word: str) -> None:
    p = torch.zeros(2, 3, dtype=D, requires_grad=True)
    with pytest.raises(ValueError, match=word):
        make([p])
