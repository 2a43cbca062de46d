"""state_dict()/load_state_dict() mid-run resumes the exact trajectory, noise included."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from synaprune import PerExampleGradStats, SynaPrune

CASES = {
    "sgd-rms-noise": dict(lr=0.05, momentum=0.9, aggregation="rms", noise=1e-2),
    "adam-blend-anneal": dict(lr=1e-2, base="adam", aggregation="blend", blend=0.5,
                              blend_schedule="cosine", blend_steps=30, noise=1e-2,
                              noise_schedule="anneal"),
    "sgd-stall-trigger": dict(lr=0.05, noise=0.05, noise_trigger="stall", stall_threshold=10.0,
                              stall_steps=3, noise_cooldown=4),
}


def _data():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(32, 4, generator=g, dtype=torch.float64),
            torch.randn(32, 2, generator=g, dtype=torch.float64))


def _steps(model, opt, x, y, n):
    for _ in range(n):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_resume_from_state_dict_gives_identical_trajectory(options):
    torch.manual_seed(0)
    x, y = _data()
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    stats = PerExampleGradStats(model)
    opt = SynaPrune(model.parameters(), seed=5, **options)
    _steps(model, opt, x, y, 20)

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    _steps(model, opt, x, y, 20)  # the uninterrupted run
    stats.remove()

    resumed = copy.deepcopy(model)
    resumed.load_state_dict(saved["model"])
    stats2 = PerExampleGradStats(resumed)
    opt2 = SynaPrune(resumed.parameters(), seed=999, **options)  # a different seed on purpose
    opt2.load_state_dict(saved["opt"])
    _steps(resumed, opt2, x, y, 20)
    stats2.remove()
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt2.steps == opt.steps == 40
    assert [t.state() for t in opt2.triggers] == [t.state() for t in opt.triggers]
