"""Stacked mode: S models along dim 0, one generator each, equal S separate optimizers."""

from __future__ import annotations

import pytest
import torch

from synaprune import SynaPrune
from synaprune.optim import SAM, GradientNoise, PerturbedGD, SaddleFreeNewton
from synaprune.optim._stacked import select_models

CASES = {
    "always": dict(noise=0.05),
    "stall": dict(noise=0.05, noise_trigger="stall", stall_threshold=0.5, stall_steps=2,
                  noise_cooldown=3),
    "adam-anneal-clip": dict(base="adam", noise=0.2, noise_schedule="anneal", noise_clip=0.1),
    "linear-isotropic": dict(noise=0.3, noise_schedule="linear", noise_steps=15,
                             noise_shape="isotropic", noise_eps=1e-3),
    "cosine-clip": dict(noise=0.3, noise_schedule="cosine", noise_steps=20, noise_clip=0.2),
    "linear-guard": dict(noise=0.8, noise_schedule="linear", noise_steps=20, noise_guard=0.1),
    "stall-guard-isotropic": dict(noise=0.8, noise_trigger="stall", stall_threshold=0.5,
                                  stall_steps=2, noise_cooldown=1, noise_guard=0.1,
                                  noise_shape="isotropic"),
}


def _loss(params: list[torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
    """Per-model loss of the bowl of _grad_fn, 0.5 * scale_m * ||theta_m||^2: [S]."""
    return 0.5 * scale * sum(p.reshape(scale.numel(), -1).square().sum(1) for p in params)


def _grad_fn(params: list[torch.Tensor], scale: torch.Tensor) -> list[torch.Tensor]:
    # A quadratic bowl whose curvature differs per model: the stall trigger fires at different
    # steps for different models.
    return [scale.view(-1, *[1] * (p.dim() - 1)) * p for p in params]


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_stacked_models_equal_separate_runs(options):
    s = 3
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(s, 4, 2, generator=g, dtype=torch.float64),
            torch.randn(s, 5, generator=g, dtype=torch.float64)]
    scale = torch.tensor([0.1, 1.0, 3.0], dtype=torch.float64)

    stacked = [torch.nn.Parameter(t.clone()) for t in init]
    opt = SynaPrune(stacked, lr=0.1, num_models=s,
                    generator=[torch.Generator().manual_seed(10 + m) for m in range(s)], **options)
    singles, opts = [], []
    for m in range(s):
        params = [torch.nn.Parameter(t[m].clone()) for t in init]
        singles.append(params)
        opts.append(SynaPrune(params, lr=0.1, generator=torch.Generator().manual_seed(10 + m),
                              **options))
    guarded = options.get("noise_guard") is not None
    for _ in range(25):
        for p, gr in zip(stacked, _grad_fn(stacked, scale), strict=True):
            p.grad = gr.detach().clone()
        opt.step(**({"guard": lambda: _loss(stacked, scale)} if guarded else {}))
        for m in range(s):
            for p, gr in zip(singles[m], _grad_fn(singles[m], scale[m:m + 1]), strict=True):
                p.grad = gr.detach().clone()
            def guard(m: int = m) -> torch.Tensor:
                return _loss([p[None] for p in singles[m]], scale[m:m + 1])

            opts[m].step(**({"guard": guard} if guarded else {}))
    for m in range(s):
        for ps, p1 in zip(stacked, singles[m], strict=True):
            # Bit-equal where every operation is elementwise or per slice; the guard's loss is
            # a reduction whose rounding may differ, hence 1e-12 (float64), not equality.
            torch.testing.assert_close(ps[m], p1, rtol=0, atol=1e-12 if guarded else 0)
    if guarded:
        assert opt.rejected == [o.rejected[0] for o in opts]
        assert sum(opt.rejected) > 0  # the guard really acted
    kicks = [t.kicks for t in opt.triggers]
    assert kicks == [o.triggers[0].kicks for o in opts]
    if options.get("noise_trigger") == "stall":
        assert len(set(kicks)) > 1  # the models really were triggered independently


def test_stacked_state_dict_round_trip():
    gens = [torch.Generator().manual_seed(m) for m in range(2)]
    p = torch.nn.Parameter(torch.ones(2, 3, dtype=torch.float64))
    opt = SynaPrune([p], lr=0.0, noise=0.1, num_models=2, generator=gens)
    p.grad = torch.zeros_like(p)
    opt.step()
    sd = opt.state_dict()
    after_one = p.detach().clone()
    opt.step()
    expected = p.detach().clone()
    with torch.no_grad():
        p.copy_(after_one)
    opt2 = SynaPrune([p], lr=0.0, noise=0.1, num_models=2,
                     generator=[torch.Generator().manual_seed(99) for _ in range(2)])
    opt2.load_state_dict(sd)
    opt2.step()
    assert torch.equal(p.detach(), expected)
    with pytest.raises(ValueError, match="models"):
        one = torch.nn.Parameter(torch.ones(1, 3, dtype=torch.float64))
        SynaPrune([one], lr=0.0, noise=0.1, num_models=1,
                  generator=[torch.Generator()]).load_state_dict(sd)


def test_stacked_mode_checks_the_models_dimension():
    with pytest.raises(ValueError, match="num_models=2 means stacked"):
        SynaPrune([torch.nn.Parameter(torch.ones(3, 2))], num_models=2,
                  generator=[torch.Generator()] * 2)
    with pytest.raises(ValueError, match="generator"):
        SynaPrune([torch.nn.Parameter(torch.ones(2))], generator=[])


BAD_STACKING = {
    # A sequence of generators alone used to switch stacked mode on: now num_models says it.
    "generators-without-num-models": (dict(generator=[torch.Generator()] * 2), "num_models=2"),
    "one-generator-for-a-stack": (dict(num_models=2, generator=torch.Generator()), "sequence"),
    "wrong-number-of-generators": (dict(num_models=2, generator=[torch.Generator()] * 3), "3"),
    "num-models-not-int": (dict(num_models=2.0), "num_models"),
}


@pytest.mark.parametrize(("options", "word"), BAD_STACKING.values(), ids=BAD_STACKING.keys())
def test_stacked_mode_needs_num_models_and_one_generator_per_model(options, word):
    with pytest.raises(ValueError, match=word):
        SynaPrune([torch.nn.Parameter(torch.ones(2, 3))], **options)


def test_seed_gives_model_s_the_seed_plus_s():
    """In stacked mode, seed=k seeds model s's generator with k + s: its noise is that of a
    single model with seed k + s."""
    init = torch.randn(3, 4, dtype=torch.float64)
    stacked = torch.nn.Parameter(init.clone())
    opt = SynaPrune([stacked], lr=0.0, noise=0.1, num_models=3, seed=5)
    stacked.grad = torch.zeros_like(stacked)
    opt.step()
    for s in range(3):
        single = torch.nn.Parameter(init[s].clone())
        one = SynaPrune([single], lr=0.0, noise=0.1, seed=5 + s)
        single.grad = torch.zeros_like(single)
        one.step()
        assert torch.equal(stacked[s], single)


# ------------------------------------------------------------------ select_models
# Dropping models mid-run (the lab frees the slots of stopped runs): the kept models continue
# exactly as they would have among all S, for every stacked optimizer.

def _wavy_losses(params: list[torch.Tensor]) -> torch.Tensor:
    """Per-model non-convex loss, [S]: each model's own slices only."""
    s = params[0].shape[0]
    flat = torch.cat([p.reshape(s, -1) for p in params], dim=1)
    return (flat.square() - 0.5).square().sum(1) + 0.3 * torch.sin(3.0 * flat).sum(1)


def _seeded(n: int, first: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(100 + first + m) for m in range(n)]


SELECT = {
    "sgd-momentum": lambda ps, gens: torch.optim.SGD(ps, lr=0.02, momentum=0.9),
    "adam": lambda ps, gens: torch.optim.Adam(ps, lr=0.02),
    "synaprune-stall-guard": lambda ps, gens: SynaPrune(
        ps, lr=0.02, noise=0.3, noise_trigger="stall", stall_threshold=4.0, stall_steps=2,
        noise_cooldown=1, noise_guard=1.0, num_models=len(gens), generator=gens),
    "synaprune-escape-adam": lambda ps, gens: SynaPrune(
        ps, lr=0.02, base="adam", preset="escape", total_steps=12, num_models=len(gens),
        generator=gens),
    "perturbed-gd": lambda ps, gens: PerturbedGD(ps, lr=0.02, threshold=50.0, t_thres=2,
                                                 radius=0.2, num_models=len(gens),
                                                 generator=gens),
    "gradient-noise": lambda ps, gens: GradientNoise(ps, lr=0.02, eta=0.1, momentum=0.5,
                                                     num_models=len(gens), generator=gens),
    "sam": lambda ps, gens: SAM(ps, lr=0.02, rho=0.05, num_models=len(gens)),
    "saddle-free-newton": lambda ps, gens: SaddleFreeNewton(ps, lr=0.3, krylov_dim=3,
                                                            num_models=len(gens)),
}


def _train(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: int) -> None:
    for _ in range(steps):
        if isinstance(opt, SaddleFreeNewton):  # differentiates the loss itself
            opt.step(lambda: _wavy_losses(params).sum())
            continue

        def closure() -> torch.Tensor:
            opt.zero_grad()
            losses = _wavy_losses(params)
            losses.sum().backward()
            return losses.detach()

        closure()
        if isinstance(opt, SAM):
            opt.step(closure)
        elif isinstance(opt, SynaPrune) and opt.noise_guard is not None:
            opt.step(guard=lambda: _wavy_losses(params))
        else:
            opt.step()


@pytest.mark.parametrize("make", SELECT.values(), ids=SELECT.keys())
def test_select_models_continues_the_kept_models_exactly(make):
    s, keep = 5, [0, 2, 3]
    g = torch.Generator().manual_seed(1)
    # Models of different scales: gradient norms (and so stall triggers) differ by model.
    scale = torch.tensor([0.3, 0.6, 1.0, 0.9, 0.5], dtype=torch.float64)
    init = [scale.view(-1, *[1] * (t.dim() - 1)) * t
            for t in (torch.randn(s, 3, 2, generator=g, dtype=torch.float64),
                      torch.randn(s, 4, generator=g, dtype=torch.float64))]
    params = [t.clone().requires_grad_(True) for t in init]
    opt = make(params, _seeded(s))
    _train(opt, params, 6)
    before = [p.detach().clone() for p in params]
    new = select_models(opt, keep)
    assert [p.shape[0] for p in new] == [3, 3]
    assert all(q is p for q, p in zip(new, [p for gr in opt.param_groups for p in gr["params"]],
                                      strict=True))
    for q, b in zip(new, before, strict=True):
        assert torch.equal(q.detach(), b[keep])  # the kept rows, untouched
    _train(opt, new, 6)
    # Reference: the kept models alone from the start, each with its own generator.
    ref = [t[keep].clone().requires_grad_(True) for t in init]
    ref_opt = make(ref, [torch.Generator().manual_seed(100 + m) for m in keep])
    _train(ref_opt, ref, 12)
    for q, r in zip(new, ref, strict=True):
        torch.testing.assert_close(q.detach(), r.detach(), rtol=0, atol=1e-12)
    # The per-model counters and diagnostics went with their models.
    for name in ("rejected", "extra", "num_models"):
        assert getattr(opt, name, None) == getattr(ref_opt, name, None)
    if isinstance(opt, SynaPrune):
        assert [t.state() for t in opt.triggers] == [t.state() for t in ref_opt.triggers]
    if isinstance(opt, SaddleFreeNewton):
        assert torch.equal(opt.krylov_dims, ref_opt.krylov_dims)
    moved = max((q.detach() - b[keep]).abs().max().item() for q, b in zip(new, before,
                                                                          strict=True))
    assert moved > 1e-3  # the optimizer went on stepping the kept models


def test_select_models_refuses_what_it_cannot_split():
    ps = [torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)]
    with pytest.raises(ValueError, match="one model"):
        select_models(SynaPrune([torch.zeros(4, 3, requires_grad=True)], lr=0.1), [0])
    opt = torch.optim.SGD(ps, lr=0.1)
    for bad in ([], [2, 1], [0, 4], [-1]):
        with pytest.raises(ValueError, match="Invalid index"):
            select_models(opt, bad)
    opt.state[ps[0]]["running"] = torch.zeros(3)  # a per-coordinate statistic, not per model
    with pytest.raises(ValueError, match="cannot be split by model"):
        select_models(opt, [0, 1])
    assert ps[0].shape[0] == 4  # nothing changed before the refusal


def test_select_models_moves_every_per_model_counter_with_its_model():
    # Counters that this run leaves equal across models are set apart by hand, so that a
    # mix-up of models cannot hide behind equal values.
    gens = _seeded(4)
    ps = [torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)]
    sp = SynaPrune(ps, lr=0.1, noise=0.1, noise_trigger="stall", noise_guard=1.0,
                   num_models=4, generator=gens)
    sp.rejected = [10, 11, 12, 13]
    for m, t in enumerate(sp.triggers):
        t.stalled, t.wait, t.kicks = m, 2 * m, 3 * m
    select_models(sp, [1, 3])
    assert sp.rejected == [11, 13] and sp.generators == [gens[1], gens[3]]
    assert [t.state() for t in sp.triggers] == [{"stalled": 1, "wait": 2, "kicks": 3},
                                                 {"stalled": 3, "wait": 6, "kicks": 9}]
    pg = PerturbedGD([torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)], lr=0.1,
                     num_models=4, generator=gens)
    pg.extra["t_noise"], pg.extra["kicks"] = [5, 6, 7, 8], [0, 1, 2, 3]
    select_models(pg, [0, 2])
    assert pg.extra["t_noise"] == [5, 7] and pg.extra["kicks"] == [0, 2]
    assert pg.generators == [gens[0], gens[2]] and pg.num_models == 2
