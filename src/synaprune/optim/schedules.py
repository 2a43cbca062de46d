"""Schedules for the blend weight lambda (mechanism A) and the noise scale sigma (mechanism B).

Every schedule is a pure function of the step count ``t`` (the number of optimizer steps already
taken, so the first step uses ``t = 0``). Keeping them pure means a resumed run recomputes the
same value from the saved step count; no schedule carries state of its own.
"""

from __future__ import annotations

import math

BLEND_SCHEDULES = ("constant", "linear", "cosine")
NOISE_SCHEDULES = ("constant", "exponential", "anneal", "linear", "cosine")
# The schedules that reach 0 after a given number of steps (``blend_steps``, ``noise_steps``).
DECAY_TO_ZERO = ("linear", "cosine")


def decay_to_zero(value: float, t: int, *, schedule: str, steps: int) -> float:
    """``value`` decayed to 0 over ``steps`` steps and held there: the ``"linear"`` and
    ``"cosine"`` schedules of both the blend weight and the noise scale.

    Args:
        value: The value at t = 0.
        t: Steps already taken.
        schedule: ``"linear"``, value * (1 - f), or ``"cosine"``, value * (1 + cos(pi f)) / 2,
            with f = min(t, steps) / steps; so the value is exactly 0 for t >= steps.
        steps: Length of the decay, >= 1.

    Returns:
        The decayed value, in [0, value].
    """
    assert steps > 0
    if t >= steps:  # exactly 0 (cos(pi) is -1 to rounding only)
        return 0.0
    frac = t / steps
    if schedule == "linear":
        return value * (1.0 - frac)
    if schedule == "cosine":
        return value * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"Invalid schedule: {schedule!r}; expected one of {DECAY_TO_ZERO}")


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
    if schedule not in DECAY_TO_ZERO:
        raise ValueError(f"Invalid blend_schedule: {schedule!r}; expected one of "
                         f"{BLEND_SCHEDULES}")
    assert steps is not None
    return decay_to_zero(lam, t, schedule=schedule, steps=steps)


def noise_scale(sigma: float, t: int, *, schedule: str, decay: float, gamma: float,
                steps: int | None = None) -> float:
    """Relative noise scale sigma_t of the magnitude-proportional weight noise.

    Args:
        sigma: The initial scale sigma_0 (a relative size: a kick moves theta by about
            ``sigma_t * (|theta| + eps0)``).
        t: Steps already taken.
        schedule: ``"constant"``: sigma_0. ``"exponential"``: sigma_0 * decay**t.
            ``"anneal"``: the variance follows eta / (1 + t)**gamma with eta = sigma_0**2
            (Neelakantan et al. 2015), so sigma_t = sigma_0 / (1 + t)**(gamma / 2).
            ``"linear"`` and ``"cosine"``: sigma_0 decayed to 0 over ``steps`` steps
            (:func:`decay_to_zero`), sigma_t = 0 for t >= steps: a schedule relative to the
            training budget.
        decay: Factor per step of the exponential schedule, in (0, 1].
        gamma: Exponent of the annealed variance (0.55 in Neelakantan et al.).
        steps: Length of the linear or cosine decay (required by those, ignored otherwise).

    Returns:
        sigma_t >= 0.
    """
    if schedule == "constant":
        return sigma
    if schedule == "exponential":
        return sigma * decay**t
    if schedule == "anneal":
        return sigma / (1.0 + t) ** (gamma / 2.0)
    if schedule in DECAY_TO_ZERO:
        if steps is None or steps < 1:
            raise ValueError(f"Invalid noise_steps: {steps}; a {schedule!r} schedule needs "
                             "noise_steps >= 1")
        return decay_to_zero(sigma, t, schedule=schedule, steps=steps)
    raise ValueError(f"Invalid noise_schedule: {schedule!r}; expected one of {NOISE_SCHEDULES}")
