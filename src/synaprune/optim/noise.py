"""Mechanism B: weight noise proportional to weight magnitude, and when to apply it.

After the update, theta <- theta + sigma_t * (|theta| + eps0) * xi, xi ~ N(0, I). The noise is
multiplicative, so each |theta| random-walks on a log scale; with a large step it can blow a run
up. Two guards: ``clip`` caps the relative kick |sigma_t * xi| coordinate-wise, and the
optimizer's ``noise_guard`` undoes a kick that raised the loss too much
(:func:`guard_rejects`).

The ablation ``shape="isotropic"`` kicks by sigma_t * rms * xi instead, with one scale per
parameter tensor, rms = sqrt(mean_i (|theta_i| + eps0)**2) over the tensor's coordinates (over
model s's slice in stacked mode): the same expected energy E||kick||**2 = sigma_t**2 *
sum_i (|theta_i| + eps0)**2 per tensor, but no longer proportional to each weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

NOISE_TRIGGERS = ("always", "stall")
NOISE_SHAPES = ("magnitude", "isotropic")


@torch.no_grad()
def add_weight_noise(
    param: Tensor,
    sigma: float,
    *,
    eps0: float,
    clip: float | None,
    generator: torch.Generator,
    shape: str = "magnitude",
) -> None:
    """Kick ``param`` in place by sigma * scale * xi, xi ~ N(0, I) of param's shape.

    Args:
        param: the parameter (one model's), any shape; updated in place.
        sigma: relative noise scale sigma_t.
        eps0: floor so that zero weights still move.
        clip: if given, |sigma * xi| is clamped to ``clip`` coordinate-wise (the guard).
        generator: source of xi; drawn on the generator's device, then moved to the param's.
        shape: ``"magnitude"``: scale = |param| + eps0 per coordinate (mechanism B);
            ``"isotropic"``: scale = noise_rms(param, eps0), one number for the tensor (the
            ablation of the same expected energy).
    """
    xi = torch.randn(param.shape, generator=generator, dtype=param.dtype, device=generator.device)
    kick = xi.to(param.device).mul_(sigma)
    if clip is not None:
        kick.clamp_(-clip, clip)
    param.addcmul_(noise_scale_of(param, eps0, shape), kick)


def noise_scale_of(param: Tensor, eps0: float, shape: str) -> Tensor:
    """The per-coordinate scale s of the kick sigma * s * xi (param's shape).

    ``"magnitude"``: s_i = |theta_i| + eps0. ``"isotropic"``: s_i = rms for every i, with
    rms = sqrt(mean_i (|theta_i| + eps0)**2), so that sum_i s_i**2 is the same for both shapes:
    equal expected energy E||sigma * s * xi||**2 = sigma**2 sum_i s_i**2.
    """
    magnitude = param.abs().add_(eps0)
    if shape == "magnitude":
        return magnitude
    if shape == "isotropic":
        return magnitude.square().mean().sqrt().expand_as(param)
    raise ValueError(f"Invalid noise_shape: {shape!r}; expected one of {NOISE_SHAPES}")


def guard_rejects(before: Tensor, after: Tensor, bound: float) -> Tensor:
    """Which kicks the loss guard undoes: after > (1 + bound) * before, or after not finite.

    Args:
        before: Loss of each model after the update, before the kick, [S] (S = 1: one model).
        after: Loss of each model after the kick, [S].
        bound: r > 0: a kick may raise the loss by the factor 1 + r at most.

    Returns:
        A bool tensor [S]; True: restore the model's pre-kick parameters.
    """
    return ~torch.isfinite(after) | (after > (1.0 + bound) * before)


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
