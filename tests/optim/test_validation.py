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


# Options that another option makes ineffective: refused, with both names in the message.
CONTRADICTORY = {
    "rms-with-blend": (dict(aggregation="rms", blend=0.3), "blend=0.3 with aggregation='rms'"),
    "mean-with-blend": (dict(blend=0.3), "blend=0.3 with aggregation='mean'"),
    "mean-with-blend-schedule": (dict(blend_schedule="linear", blend_steps=10),
                                 "aggregation='mean'"),
    "blend-steps-constant": (dict(aggregation="rms", blend_steps=10), "blend_schedule='constant'"),
    "noise-off-with-schedule": (dict(noise_schedule="anneal"), "noise=0"),
    "noise-off-with-clip": (dict(noise_clip=0.1), "noise=0"),
    "noise-off-with-stall": (dict(noise_trigger="stall"), "noise=0"),
    "noise-off-with-eps": (dict(noise_eps=1e-3), "noise=0"),
    "decay-without-exponential": (dict(noise=0.1, noise_decay=0.9), "noise_decay"),
    "gamma-without-anneal": (dict(noise=0.1, noise_schedule="exponential", noise_gamma=0.5),
                             "noise_gamma"),
    "stall-options-always": (dict(noise=0.1, stall_steps=3), "noise_trigger='always'"),
    "sgd-with-betas": (dict(betas=(0.8, 0.9)), "base='sgd'"),
    "sgd-with-amsgrad": (dict(amsgrad=True), "amsgrad"),
    "adam-with-momentum": (dict(base="adam", momentum=0.9), "base='adam'"),
    "adamw-with-nesterov": (dict(base="adamw", momentum=0.9, nesterov=True), "nesterov"),
    "group-rms-inherits-blend": (dict(aggregation="blend", blend=0.3,
                                      groups=[{"aggregation": "rms"}]), "aggregation='rms'"),
}


@pytest.mark.parametrize(("options", "words"), CONTRADICTORY.values(), ids=CONTRADICTORY.keys())
def test_contradictory_options_are_refused(options, words):
    options = dict(options)
    groups = options.pop("groups", None)
    p = torch.nn.Parameter(torch.zeros(3))
    params = [{"params": [p], **g} for g in groups] if groups else [p]
    with pytest.raises(ValueError, match="Contradictory options") as info:
        SynaPrune(params, **options)
    assert words in str(info.value)


CONSISTENT = {
    "blend-with-weight": dict(aggregation="blend", blend=0.3),
    "blend-default-weight": dict(aggregation="blend"),
    "rms-decaying": dict(aggregation="rms", blend_schedule="cosine", blend_steps=10),
    "stall-noise": dict(noise=0.1, noise_trigger="stall", stall_steps=3, noise_cooldown=0),
    "anneal": dict(noise=0.1, noise_schedule="anneal", noise_gamma=0.6, noise_clip=0.5),
    "adam-zero-momentum": dict(base="adam", momentum=0.0, betas=(0.8, 0.9)),
    "sgd-momentum": dict(momentum=0.9, nesterov=True, weight_decay=1e-3),
}


@pytest.mark.parametrize("options", CONSISTENT.values(), ids=CONSISTENT.keys())
def test_consistent_options_are_accepted_and_take_effect(options):
    p = torch.nn.Parameter(torch.zeros(3))
    opt = SynaPrune([p], **options)
    group = opt.param_groups[0]
    for k, v in options.items():
        if k in group:
            assert group[k] == v


def test_unset_options_take_torch_defaults_per_base():
    p = torch.nn.Parameter(torch.zeros(3))
    sgd, adamw = SynaPrune([p]).param_groups[0], SynaPrune([p], base="adamw").param_groups[0]
    assert sgd["weight_decay"] == 0.0 and adamw["weight_decay"] == 1e-2
    assert adamw["betas"] == (0.9, 0.999) and adamw["eps"] == 1e-8
    assert SynaPrune([p], aggregation="blend").param_groups[0]["blend"] == 1.0
