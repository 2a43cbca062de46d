"""Stacked mode: S models along dim 0, one generator each, equal S separate optimizers."""

from __future__ import annotations

import pytest
import torch

from synaprune import SynaPrune

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
