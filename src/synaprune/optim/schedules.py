"""Schedules for the blend weight lambda (mechanism A) and the noise scale sigma (mechanism B).

Every schedule is a pure function of the step count ``t`` (the number of optimizer steps already
taken, so the first step uses ``t = 0``). Keeping them pure means a resumed run recomputes the
same value from the saved step count; no schedule carries state of its own.
"""

from __future__ import annotations

import math

BLEND_SCHEDULES = ("constant", "linear", "cosine")
NOISE_SCHEDULES = ("constant", "exponential", "anneal")


def blend_weight(lam: float, t: int, *, schedule: str, steps: int | None) -> float:
    """Blend weight lambda_t of the aggregation ``blend(lambda)``.

    Args:
        lam: The initial weight, in [0, 1]; 0 is the plain mean, 1 the root mean square.
        t: Steps already taken.
        schedule: ``"constant"`` keeps ``lam``; ``"linear"`` and ``"cosine"`` decay it to 0
            (plain ``mean``) over ``steps`` steps and hold it there. Decaying to ``mean`` is the
            answer to the caveat that ``rms`` does not vanish at a minimum of the data loss.
        steps: Length of the decay; required unless ``schedule == "constant"``.

    Returns:
        lambda_t in [0, lam].
    """
    if schedule == "constant":
        return lam
    assert steps is not None and steps > 0
    frac = min(t, steps) / steps
    if schedule == "linear":
        return lam * (1.0 - frac)
    if schedule == "cosine":
        return lam * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"Invalid blend_schedule: {schedule!r}; expected one of {BLEND_SCHEDULES}")


def noise_scale(sigma: float, t: int, *, schedule: str, decay: float, gamma: float) -> float:
    """Relative noise scale sigma_t of the magnitude-proportional weight noise.

    Args:
        sigma: The initial scale sigma_0 (a relative size: a kick moves theta by about
            ``sigma_t * (|theta| + eps0)``).
        t: Steps already taken.
        schedule: ``"constant"``: sigma_0. ``"exponential"``: sigma_0 * decay**t.
            ``"anneal"``: the variance follows eta / (1 + t)**gamma with eta = sigma_0**2
            (Neelakantan et al. 2015), so sigma_t = sigma_0 / (1 + t)**(gamma / 2).
        decay: Factor per step of the exponential schedule, in (0, 1].
        gamma: Exponent of the annealed variance (0.55 in Neelakantan et al.).

    Returns:
        sigma_t >= 0.
    """
    if schedule == "constant":
        return sigma
    if schedule == "exponential":
        return sigma * decay**t
    if schedule == "anneal":
        return sigma / (1.0 + t) ** (gamma / 2.0)
    raise ValueError(f"Invalid noise_schedule: {schedule!r}; expected one of {NOISE_SCHEDULES}")
