"""Presets of :class:`synaprune.SynaPrune`: mechanism-B settings that need only the budget.

``SynaPrune(params, lr=..., preset="escape", total_steps=N)`` sets mechanism B to
:data:`ESCAPE`: the kick on every step, sigma_0 = ``ESCAPE["noise"]``, decaying linearly to 0
over the first ``ESCAPE["fraction"]`` of the N steps (``noise_steps = round(fraction * N)``,
at least 1), so the last part of the budget is plain descent that settles in whatever basin the
noise left the model in. The values were calibrated on held-out seeds (``docs/tuning.md``,
"The escape preset"); what they do against plain GD is in ``docs/results.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ESCAPE", "PRESETS", "preset_options"]

PRESETS = ("escape",)

# Calibrated in docs/tuning.md ("The escape preset"): seeds 10_000 and up, lr = 5/k. First on
# teacher-student exact k = 8, 12 and sampled k = 8 at 2,000 steps (sigma_0 0.2, fraction 0.6);
# then, with the same effort as gd and gd-restarts, on exact k = 8, 12 and 16 at 3,000 steps,
# where 0.8 of the budget gave the most global runs (171 of 192 against 153 for 0.6).
ESCAPE: dict[str, Any] = {"noise": 0.2, "fraction": 0.8, "noise_clip": None}

# Mechanism B's options and their values when not given: a preset sets them, so any of them
# given along with a preset is refused (which one would win is not obvious).
_B_UNSET: dict[str, Any] = dict(
    noise=0.0, noise_schedule="constant", noise_decay=None, noise_gamma=None, noise_eps=None,
    noise_clip=None, noise_steps=None, noise_shape="magnitude", noise_guard=None,
    noise_trigger="always", stall_threshold=None, stall_steps=None, noise_cooldown=None,
)


def preset_options(preset: str | None, total_steps: int | None,
                   given: dict[str, Any]) -> dict[str, Any]:
    """Mechanism B's options of a preset, for a run of ``total_steps`` optimizer steps.

    Args:
        preset: A name of :data:`PRESETS`.
        total_steps: The training budget N in optimizer steps (>= 1).
        given: The mechanism-B options passed to the optimizer, by name (those of
            ``_B_UNSET``); each must be at its unset value.

    Returns:
        The options to use, by name (SynaPrune's keywords).

    Raises:
        ValueError: An unknown preset, a missing or bad ``total_steps``, ``total_steps``
            without a preset, or a mechanism-B option given along with the preset.
    """
    if preset is None:
        raise ValueError(f"Invalid total_steps: {total_steps}; it is the budget of a preset, "
                         f"give preset= too (one of {PRESETS})")
    if preset not in PRESETS:
        raise ValueError(f"Invalid preset: {preset!r}; expected one of {PRESETS}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"Invalid total_steps: {total_steps!r}; preset={preset!r} needs the "
                         "training budget in optimizer steps, an int >= 1")
    clash = sorted(k for k, v in given.items() if v != _B_UNSET[k])
    if clash:
        raise ValueError(f"Contradictory options: preset={preset!r} sets mechanism B, and "
                         f"{', '.join(clash)} was given too; drop them, or drop the preset and "
                         "give every option")
    return dict(noise=ESCAPE["noise"], noise_schedule="linear",
                noise_steps=max(1, round(ESCAPE["fraction"] * total_steps)),
                noise_trigger="always", noise_clip=ESCAPE["noise_clip"])
