"""Success rates with 95% Wilson intervals, one panel per problem."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from synaprune._io import atomic_output
from synaprune.bench.methods import method_label
from synaprune.bench.summary import Summary

__all__ = ["plot_success_rates"]


def plot_success_rates(summaries: Sequence[Summary], path: str | Path, *,
                       title: str | None = None) -> Path:
    """Draw each method's success rate and its 95% Wilson interval, a panel per problem.

    Methods are sorted within a panel as in ``synaprune results`` (success rate, then median
    final loss), best at the top, and named as in its table (the name and the options other
    than the method's defaults, :func:`~synaprune.bench.method_label`); each bar is labelled
    with successes/runs and the median final loss, so that panels where every method fails
    still say something.

    Args:
        summaries: From :func:`synaprune.bench.summarize`; several budgets of one
            (problem, method) become separate bars.
        path: Image file to write (format from the suffix, e.g. ``.png``, ``.svg``); written
            to a temporary file in the same directory first, then renamed, with the
            permissions of the user's umask.
        title: Figure title.

    Returns:
        The path written.

    Raises:
        ValueError: If ``summaries`` is empty.
    """
    if not summaries:
        raise ValueError("Nothing to plot: no runs match")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = sorted({s.problem for s in summaries})
    rows = {p: sorted((s for s in summaries if s.problem == p),
                      key=lambda s: (-s.success_rate, s.median_final_loss)) for p in problems}
    height = max(len(r) for r in rows.values())
    fig, axes = plt.subplots(len(problems), 1, squeeze=False,
                             figsize=(9, 0.8 + len(problems) * (0.8 + 0.28 * height)))
    for ax, problem in zip(axes[:, 0], problems, strict=True):
        group = rows[problem][::-1]  # best at the top
        y = list(range(len(group)))
        rates = [s.success_rate for s in group]
        low = [s.success_rate - s.ci_low for s in group]
        high = [s.ci_high - s.success_rate for s in group]
        ax.barh(y, rates, color="C0", alpha=0.6)
        ax.errorbar(rates, y, xerr=[low, high], fmt="none", ecolor="k", capsize=2, lw=0.8)
        labels = [method_label(s.method) + (f" ({s.budget} steps)" if len(
            {t.budget for t in group}) > 1 else "") for s in group]
        ax.set_yticks(y, labels, fontsize=8)
        for yi, s in zip(y, group, strict=True):
            ax.text(1.02, yi, f"{s.successes}/{s.runs}, median loss {s.median_final_loss:.3g}",
                    va="center", fontsize=7, transform=ax.get_yaxis_transform())
        ax.set_xlim(0, 1)
        ax.set_title(problem, fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("success rate (bars: 95% Wilson interval)")
    if title:
        fig.suptitle(title, fontsize=10)
    # leave the top 0.4 inch for the title, above the first panel's own
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()) if title else None)
    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
