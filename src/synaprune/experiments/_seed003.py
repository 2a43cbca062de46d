"""What the two seed-003 experiments share: the seed's data set and the figure helpers."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["curve_band", "figure", "paired_fraction", "seed_data"]

# Below this an objective is plotted at the floor (log axis; an exact fit is 0).
FLOOR = 1e-32


def seed_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed 003's problem (its code: nn-local-minimum): y = sin(3 x0) sin(3 x1), x ~ N(0, I_2).

    Returns:
        ``x`` of size [n, 2] and ``y`` of size [n], float64, from a generator seeded ``seed``.
    """
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x, torch.sin(3 * x[:, 0]) * torch.sin(3 * x[:, 1])


def paired_fraction(pairs: list[tuple[float, float]]) -> tuple[int, int, float, float]:
    """How often the first of each pair is strictly lower, with its 95 % Wilson interval."""
    from synaprune.bench import wilson_interval

    wins = sum(a < b for a, b in pairs)
    low, high = wilson_interval(wins, len(pairs))
    return wins, len(pairs), low, high


def figure(panels: int, width: float = 5.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(width * panels, 4.2), squeeze=False)
    return fig, axes[0]


def curve_band(ax: Any, xs: list[float], curves: list[list[float]], label: str,
               color: str) -> None:
    """Median over seeds with the interquartile band, on a log axis (zeros at FLOOR)."""
    import numpy as np

    data = np.maximum(np.array(curves, dtype=float), FLOOR)
    finite = ~np.isnan(data).all(axis=0)
    xs_arr = np.array(xs, dtype=float)[finite]
    data = data[:, finite]
    q25, q50, q75 = (np.nanquantile(data, q, axis=0) for q in (0.25, 0.5, 0.75))
    ax.plot(xs_arr, q50, color=color, label=f"{label} (n={len(curves)})")
    ax.fill_between(xs_arr, q25, q75, color=color, alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")


def fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3g}"
