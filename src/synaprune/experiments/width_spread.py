"""width-spread (seed 001, experiment 1): the spread of GD's final losses against width.

One hidden layer (64-w-10, tanh), mean squared error to one-hot labels on the first
``examples`` of scikit-learn's digits, PyTorch's default uniform initialisation from a seeded
generator, full-batch gradient descent with a small step until the gradient norm is below
``tol`` or the budget runs out. Squared error has true minima at every width (cross-entropy on
separable data has none), so "converged" means a stationary point. The seeds of a cell are
trained together as stacked tensors [S, ...] (each seed's loss depends only on its own slice,
so this equals S separate runs).

Decision (``summarize``): the spread of a width is the standard deviation of its seeds' final
losses; the claim holds when the spread at the widest width is below the spread at the
narrowest with the 95% bootstrap interval of their ratio below 1, and fails when the interval
is above 1.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

NAME = "width-spread"
SEED = "001"
CLAIM = (
    "With one hidden layer, the final losses that small-step gradient descent reaches from many "
    "initialisations become more similar (smaller spread) as the layer gets wider."
)

_QUICK = {"widths": (1, 4, 16), "blocks": 1, "block": 8, "examples": 200, "steps": 400}
# Full: 24 initialisations per width in about 20 minutes on one (shared) core.
_FULL = {"widths": (1, 2, 4, 8, 16, 32, 64), "blocks": 2, "block": 12, "examples": 300,
         "steps": 2000}
_TOL = 1e-4  # gradient norm below which a run counts as converged


def bootstrap_interval(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray],
    *,
    draws: int = 4000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)``, each sample resampled alone.

    Args:
        samples: 1-D arrays (or 2-D: rows are resampled together, e.g. (x, y) pairs).
        statistic: Vectorised over draws: receives arrays of size [draws, n_i, ...] and
            returns size [draws].
        draws: Bootstrap replicates.
        seed: Seed of the resampling (numpy Generator), so the interval is reproducible.
        level: Coverage.

    Returns:
        ``(low, high)``; NaN draws (a degenerate resample) are dropped.
    """
    rng = np.random.default_rng(seed)
    resampled = [s[rng.integers(0, len(s), size=(draws, len(s)))] for s in samples]
    values = np.asarray(statistic(*resampled), dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def cells(quick: bool) -> list[dict[str, Any]]:
    """One cell per (width, block of seeds trained together)."""
    spec = _QUICK if quick else _FULL
    block = spec["block"]
    return [
        {"width": w, "first_seed": block * b, "seeds": block, "examples": spec["examples"],
         "steps": spec["steps"], "lr": _step_size(w)}
        for w in spec["widths"] for b in range(spec["blocks"])
    ]


def _step_size(width: int) -> float:
    # The loss's curvature grows with the width of the output layer's input; a fixed small
    # step would diverge at 64 and crawl at 1, so the step shrinks like 1/width beyond 4.
    return 2.0 if width <= 4 else 8.0 / width


def _data(examples: int) -> tuple[Tensor, Tensor]:
    from synaprune.problems._digits import load_digits_scaled

    x, labels = load_digits_scaled()
    return x[:examples], torch.nn.functional.one_hot(labels[:examples], 10).to(x.dtype)


def _init(width: int, seeds: Sequence[int]) -> list[Tensor]:
    """Stacked [S, ...] parameters, seed s drawn from its own generator like nn.Linear's."""
    per_seed = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        shapes = [((width, 64), 64), ((width,), 64), ((10, width), width), ((10,), width)]
        per_seed.append([
            (2 * torch.rand(shape, generator=g, dtype=torch.float64) - 1) / math.sqrt(fan_in)
            for shape, fan_in in shapes
        ])
    return [torch.stack(group).requires_grad_() for group in zip(*per_seed, strict=True)]


def _losses(params: Sequence[Tensor], x: Tensor, y: Tensor) -> Tensor:
    """Per-seed mean squared error over examples and outputs, size [S]."""
    w1, b1, w2, b2 = params
    h = torch.tanh(torch.einsum("nd,swd->snw", x, w1) + b1[:, None, :])
    out = torch.einsum("snw,sow->sno", h, w2) + b2[:, None, :]
    return (out - y).square().mean(dim=(1, 2))


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Train ``seeds`` seeds of one width; fields per seed i: loss_i, grad_norm_i, steps_i."""
    x, y = _data(cell["examples"])
    seeds = range(cell["first_seed"], cell["first_seed"] + cell["seeds"])
    params = _init(cell["width"], seeds)
    lr = cell["lr"]
    n = cell["seeds"]
    steps_taken = torch.full((n,), cell["steps"], dtype=torch.int64)
    active = torch.ones(n, dtype=torch.bool)
    for step in range(cell["steps"] + 1):
        losses = _losses(params, x, y)
        grads = torch.autograd.grad(losses.sum(), params)
        grad_norm = torch.sqrt(sum(g.reshape(n, -1).square().sum(dim=1) for g in grads))
        done = active & ((grad_norm < _TOL) | ~torch.isfinite(losses))
        steps_taken[done] = step
        active &= ~done
        if step == cell["steps"] or not active.any():
            break
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):  # a finished seed stays where it is
                p -= lr * g * active.reshape((n,) + (1,) * (g.dim() - 1)).to(g.dtype)
    losses, grad_norm = losses.detach(), grad_norm.detach()
    out: dict[str, Any] = {}
    for i in range(n):
        out[f"loss_{i}"] = float(losses[i])
        out[f"grad_norm_{i}"] = float(grad_norm[i])
        out[f"steps_{i}"] = int(steps_taken[i])
    out["converged"] = int((grad_norm < _TOL).sum())
    out["diverged"] = int((~torch.isfinite(losses)).sum())
    return out


def _per_width(rows: list[dict[str, Any]]) -> dict[int, np.ndarray]:
    by_width: dict[int, list[float]] = {}
    for row in rows:
        values = [row[f"loss_{i}"] for i in range(row["seeds"])]
        by_width.setdefault(row["width"], []).extend(values)
    return {w: np.asarray(v) for w, v in sorted(by_width.items())}


def _std(a: np.ndarray) -> np.ndarray:
    return a.std(axis=-1, ddof=1)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Spread (std) of final losses per width with bootstrap intervals; the widest against
    the narrowest decides."""
    losses = _per_width(rows)
    table = []
    for w, values in losses.items():
        finite = values[np.isfinite(values)]
        low, high = bootstrap_interval([finite], _std, seed=w)
        table.append({"width": w, "runs": int(values.size), "finite": int(finite.size),
                      "median_loss": float(np.median(finite)), "min_loss": float(finite.min()),
                      "max_loss": float(finite.max()), "std": float(finite.std(ddof=1)),
                      "std_low": low, "std_high": high,
                      # Relative spread: the losses themselves fall with width.
                      "relative_std": float(finite.std(ddof=1) / np.median(finite))})
    narrow, wide = min(losses), max(losses)
    a = losses[narrow][np.isfinite(losses[narrow])]
    b = losses[wide][np.isfinite(losses[wide])]
    ratio = float(b.std(ddof=1) / a.std(ddof=1))
    low, high = bootstrap_interval([a, b], lambda x, y: _std(y) / _std(x))
    held = True if high < 1 else False if low > 1 else None
    converged = sum(r["converged"] for r in rows)
    runs = sum(r["seeds"] for r in rows)
    stds = ", ".join(f"w={t['width']}: {t['std']:.2g} ({100 * t['relative_std']:.2g}% of the "
                     f"median)" for t in table)
    verdict = (
        f"std of final losses at width {wide} / width {narrow} = {ratio:.3g} "
        f"(95% bootstrap interval {low:.3g}-{high:.3g}); per width {stds}; "
        f"{converged}/{runs} runs reached gradient norm < {_TOL:g}"
    )
    return {"held": held, "verdict": verdict, "table": table, "ratio": ratio,
            "ratio_low": low, "ratio_high": high, "converged": converged, "runs": runs}


def plot(rows: list[dict[str, Any]], path: pathlib.Path) -> None:
    """Final losses of every initialisation against width (log-log), with each width's std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = _per_width(rows)
    summary = summarize(rows)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    rng = np.random.default_rng(0)
    for w, values in losses.items():
        jitter = w * np.exp(rng.uniform(-0.08, 0.08, values.size))
        ax.scatter(jitter, values, s=8, alpha=0.6, color="tab:blue")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden width")
    ax.set_ylabel("final training MSE")
    ax.set_title("final losses of GD from many initialisations")
    t = summary["table"]
    widths = [r["width"] for r in t]
    std = np.array([r["std"] for r in t])
    err = np.array([[r["std"] - r["std_low"] for r in t], [r["std_high"] - r["std"] for r in t]])
    bx.errorbar(widths, std, yerr=err, marker="o", capsize=3)
    bx.set_xscale("log", base=2)
    bx.set_yscale("log")
    bx.set_xlabel("hidden width")
    bx.set_ylabel("std of final losses (95% bootstrap)")
    bx.set_title("spread against width")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
