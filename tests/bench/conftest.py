"""Shared fixtures of the bench tests: a tiny exact problem where some seeds diverge."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from synaprune.problems import Problem


class _Quartic(nn.Module):
    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        w = torch.empty(2, dtype=torch.float64).uniform_(-2.0, 2.0, generator=generator)
        self.w = nn.Parameter(w)


def quartic_problem() -> Problem:
    """Loss sum(w**4) / 4 with w ~ U[-2, 2]^2: under gd with lr=1, |w| > sqrt(2) blows up to
    inf within a few steps (diverged), smaller |w| creep towards 0 (success or budget)."""
    return Problem(
        name="quartic", options={}, global_loss=0.0, tolerance=1e-3, per_example=False,
        description="test problem", _make_model=_Quartic,
        _exact_loss=lambda pb: pb["w"].pow(4).sum() / 4,
    )


@pytest.fixture
def quartic() -> Problem:
    return quartic_problem()
