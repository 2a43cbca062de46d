"""Invalid options raise ValueError naming the option."""

from __future__ import annotations

import pytest
import torch

from synaprune import SynaPrune

BAD = {
    "negative-lr": (dict(lr=-0.1), "learning rate"),
    "nan-lr": (dict(lr=float("nan")), "learning rate"),
    "base": (dict(base="rmsprop"), "base"),
    "momentum": (dict(momentum=-0.5), "momentum"),
    "nesterov-without-momentum": (dict(nesterov=True), "nesterov"),
    "weight-decay": (dict(weight_decay=-1.0), "weight_decay"),
    "beta1": (dict(betas=(1.0, 0.999)), "beta"),
    "eps": (dict(eps=-1.0), "epsilon"),
    "aggregation": (dict(aggregation="median"), "aggregation"),
    "blend-range": (dict(aggregation="blend", blend=1.5), "blend"),
    "blend-schedule": (dict(blend_schedule="step"), "blend_schedule"),
    "blend-steps": (dict(blend_schedule="linear"), "blend_steps"),
    "noise": (dict(noise=-0.1), "noise"),
    "noise-inf": (dict(noise=float("inf")), "noise"),
    "noise-schedule": (dict(noise_schedule="cyclic"), "noise_schedule"),
    "noise-decay": (dict(noise_decay=1.5), "noise_decay"),
    "noise-clip": (dict(noise_clip=0.0), "noise_clip"),
    "noise-trigger": (dict(noise_trigger="sometimes"), "noise_trigger"),
    "stall-steps": (dict(stall_steps=0), "stall_steps"),
    "cooldown": (dict(noise_cooldown=-1), "noise_cooldown"),
    "seed-and-generator": (dict(seed=1, generator=torch.Generator()), "seed"),
}


@pytest.mark.parametrize(("options", "word"), BAD.values(), ids=BAD.keys())
def test_invalid_option_raises_value_error_naming_it(options, word):
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=word):
        SynaPrune([p], **options)


def test_options_are_keyword_only():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(TypeError):
        SynaPrune([p], 0.1, "adam")  # type: ignore[misc]


def test_rms_without_statistics_explains_what_to_do():
    p = torch.nn.Parameter(torch.ones(3))
    opt = SynaPrune([p], lr=0.1, aggregation="rms")
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="PerExampleGradStats"):
        opt.step()
