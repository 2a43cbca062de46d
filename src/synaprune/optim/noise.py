"""Mechanism B: weight noise proportional to weight magnitude, and when to apply it.

After the update, theta <- theta + sigma_t * (|theta| + eps0) * xi, xi ~ N(0, I). The noise is
multiplicative, so each |theta| random-walks on a log scale; with a large step it can blow a run
up. ``clip`` is the guard: it caps the relative kick |sigma_t * xi| coordinate-wise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

NOISE_TRIGGERS = ("always", "stall")


@torch.no_grad()
def add_weight_noise(
    param: Tensor,
    sigma: float,
    *,
    eps0: float,
    clip: float | None,
    generator: torch.Generator,
) -> None:
    """Kick ``param`` in place by sigma * (|param| + eps0) * xi.

    Args:
        param: the parameter, any shape; updated in place.
        sigma: relative noise scale sigma_t.
        eps0: floor so that zero weights still move.
        clip: if given, |sigma * xi| is clamped to ``clip`` coordinate-wise (the guard).
        generator: source of xi; drawn on the generator's device, then moved to the param's.
    """
    xi = torch.randn(param.shape, generator=generator, dtype=param.dtype, device=generator.device)
    kick = xi.to(param.device).mul_(sigma)
    if clip is not None:
        kick.clamp_(-clip, clip)
    param.addcmul_(param.abs().add_(eps0), kick)


@dataclass
class StallTrigger:
    """Decides each step whether to kick: ``always``, or after a stall (Jin et al. 2017).

    A stall is the gradient norm staying below ``threshold`` for ``patience`` consecutive steps;
    after each kick, ``cooldown`` steps pass before the stall count starts again.

    Attributes:
        mode: ``"always"`` or ``"stall"``.
        threshold: gradient-norm threshold of a stalled step.
        patience: T, the number of consecutive stalled steps that trigger a kick.
        cooldown: steps after a kick during which no kick happens.
        stalled: current count of consecutive stalled steps (state).
        wait: steps of cool-down left (state).
        kicks: kicks so far (state).
    """

    mode: str = "always"
    threshold: float = 1e-3
    patience: int = 10
    cooldown: int = 50
    stalled: int = 0
    wait: int = 0
    kicks: int = 0

    def __call__(self, grad_norm: float) -> bool:
        """Advance one step with this step's gradient norm; return whether to kick now."""
        if self.mode == "always":
            self.kicks += 1
            return True
        if self.wait > 0:
            self.wait -= 1
            return False
        self.stalled = self.stalled + 1 if grad_norm < self.threshold else 0
        if self.stalled < self.patience:
            return False
        self.stalled, self.wait = 0, self.cooldown
        self.kicks += 1
        return True

    def state(self) -> dict[str, int]:
        return {"stalled": self.stalled, "wait": self.wait, "kicks": self.kicks}

    def load(self, state: dict[str, int]) -> None:
        self.stalled, self.wait, self.kicks = state["stalled"], state["wait"], state["kicks"]
