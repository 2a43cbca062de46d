"""The report's figures of one problem: outcomes, loss-curve bands, final losses.

Every figure is a PNG written by :func:`save_png`, whose bytes depend only on the data (no
date or software string in the file), so that a report rebuilt from the same database is
byte-for-byte the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synaprune.report._data import KIND_LABELS
from synaprune.report._stats import OUTCOMES, Band, outcome_counts

__all__ = ["OUTCOME_COLORS", "outcome_label", "plot_final_losses", "plot_loss_bands",
           "plot_outcomes", "save_png"]

OUTCOME_COLORS = {"global": "#2a9d8f", "spurious": "#e76f51", "saddle": "#f4a261",
                  "moving": "#e9c46a", "unstable": "#9b5de5", "diverged": "#264653",
                  "unknown": "#adb5bd"}


def outcome_label(name: str) -> str:
    """The words for an outcome of :data:`~synaprune.report._stats.OUTCOMES`."""
    return KIND_LABELS.get(name, "failed, kind not recorded")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Save ``fig`` as a PNG without metadata (no software version, no date) and close it."""
    plt = _plt()
    try:
        fig.savefig(path, dpi=dpi, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)
    return Path(path)


def plot_outcomes(groups: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: str | Path, *,
                  title: str) -> Path:
    """Each method's outcomes as a stacked bar of shares, with the 95 % Wilson interval of
    the success share (the ``global`` part) as an error bar.

    Args:
        groups: ``(label, runs)`` per method, top to bottom.
        path: PNG to write.
        title: Figure title.

    Returns:
        The path written.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.32 * max(len(groups), 3)))
    shown: set[str] = set()
    for yi, (_, runs) in enumerate(groups):
        counts = outcome_counts(runs)
        left = 0.0
        for name in OUTCOMES:
            share = counts[name][0] / len(runs) if runs else 0.0
            if share > 0:
                ax.barh(yi, share, left=left, color=OUTCOME_COLORS[name],
                        label=None if name in shown else outcome_label(name))
                shown.add(name)
            left += share
        n, lo, hi = counts["global"]
        p = n / len(runs) if runs else 0.0
        ax.errorbar([p], [yi], xerr=[[p - lo], [hi - p]], fmt="none", ecolor="k", capsize=3,
                    lw=0.9)
        ax.text(1.01, yi, f"{n}/{len(runs)}", va="center", fontsize=7,
                transform=ax.get_yaxis_transform())
    ax.set_yticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of runs (error bar: 95% Wilson interval of the success share)")
    ax.set_title(title, fontsize=9, loc="left")
    if shown:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.06, 1.0), frameon=False)
    fig.tight_layout()
    return save_png(fig, path)


def plot_loss_bands(bands: Sequence[tuple[str, Band]], path: str | Path, *, title: str,
                    xlabel: str, threshold: float | None) -> Path:
    """Median loss over seeds per method with its 10-90 % band, on a log loss axis.

    Args:
        bands: ``(label, band)`` per method.
        path: PNG to write.
        title: Figure title.
        xlabel: Label of the x axis (steps or cost).
        threshold: The success threshold (global loss + tolerance), drawn dotted; None: none.

    Returns:
        The path written.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    finite = [v for _, b in bands for v in (b.low, b.median, b.high)]
    values = np.concatenate(finite) if finite else np.array([1.0])
    positive = values[np.isfinite(values) & (values > 0)]
    floor = float(positive.min()) / 2 if positive.size else 1e-12
    top = float(positive.max()) * 2 if positive.size else 1.0
    for i, (label, band) in enumerate(bands):
        color = f"C{i % 10}"

        def clip(v: np.ndarray) -> np.ndarray:
            # a loss of 0 or +inf has no place on a log axis: pinned to the frame's edges
            return np.clip(np.where(np.isfinite(v), v, top), floor, top)

        ax.fill_between(band.x, clip(band.low), clip(band.high), color=color, alpha=0.15,
                        step="post", lw=0)
        ax.step(band.x, clip(band.median), where="post", color=color, lw=1.2,
                label=f"{label} ({band.runs} runs)")
    if threshold is not None and threshold > 0:
        ax.axhline(threshold, color="k", ls=":", lw=0.8, label="success threshold")
    ax.set_yscale("log")
    ax.set_ylim(floor, top)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("training loss (median; band: 10-90% of seeds)")
    ax.set_title(title, fontsize=9, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return save_png(fig, path)


def plot_final_losses(groups: Sequence[tuple[str, Sequence[dict[str, Any]]]],
                      path: str | Path, *, title: str, global_loss: float | None,
                      threshold: float | None) -> Path:
    """Every run's final loss per method (one dot per run, coloured by outcome, log axis),
    with the global loss and the success threshold marked; diverged runs are counted in the
    label (they have no finite loss).

    Args:
        groups: ``(label, runs)`` per method, top to bottom.
        path: PNG to write.
        title: Figure title.
        global_loss: The problem's global loss (a line where it is positive; named in the
            legend when it is 0, which a log axis cannot show); None when unknown.
        threshold: global loss + tolerance; None when unknown.

    Returns:
        The path written.
    """
    from synaprune.report._stats import outcome

    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.34 * max(len(groups), 3)))
    losses = [r["final_loss"] for _, runs in groups for r in runs
              if math.isfinite(r["final_loss"]) and r["final_loss"] > 0]
    floor = min(losses) / 2 if losses else 1e-12
    rng = np.random.default_rng(0)  # fixed jitter: the same picture on every build
    labels = []
    shown: set[str] = set()
    for yi, (label, runs) in enumerate(groups):
        diverged = sum(1 for r in runs if not math.isfinite(r["final_loss"]))
        labels.append(label + (f" ({diverged} diverged)" if diverged else ""))
        for name in OUTCOMES:
            xs = [max(r["final_loss"], floor) for r in runs if outcome(r) == name
                  and math.isfinite(r["final_loss"])]
            if not xs:
                continue
            ys = yi + rng.uniform(-0.28, 0.28, size=len(xs))
            ax.scatter(xs, ys, s=9, color=OUTCOME_COLORS[name], alpha=0.7, lw=0,
                       label=None if name in shown else outcome_label(name))
            shown.add(name)
    if global_loss is not None and global_loss > 0:
        ax.axvline(global_loss, color="k", lw=1.0, label=f"global loss {global_loss:.4g}")
    if threshold is not None and threshold > 0:
        text = f"success threshold {threshold:.3g}"
        if global_loss == 0:
            text += " (global loss 0)"
        ax.axvline(threshold, color="k", ls=":", lw=0.9, label=text)
    ax.set_xscale("log")
    ax.set_yticks(range(len(groups)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("final training loss (one dot per run; losses below the axis pinned to it)")
    ax.set_title(title, fontsize=9, loc="left")
    ax.grid(axis="x", alpha=0.3)
    if shown:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return save_png(fig, path)
