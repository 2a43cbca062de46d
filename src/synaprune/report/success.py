"""Success rates with 95% Wilson intervals, one panel per problem, each bar split by how the
runs ended (global, spurious minimum, saddle, still moving, unstable, diverged, not recorded)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from synaprune._io import atomic_output
from synaprune.bench.kinds import KIND_LABELS
from synaprune.bench.methods import method_label
from synaprune.bench.summary import KIND_FIELDS, Summary

# Colours of the kinds, in KIND_FIELDS order (global first: its share is the success rate).
_KIND_COLOURS = ("C2", "C3", "C1", "C0", "C4", "k", "0.8", "0.6")

__all__ = ["plot_success_rates"]


def plot_success_rates(summaries: Sequence[Summary], path: str | Path, *,
                       title: str | None = None) -> Path:
    """Draw each method's success rate and its 95% Wilson interval, a panel per problem.

    Methods are sorted within a panel as in ``synaprune results`` (success rate, then median
    final loss), best at the top, and named as in its table (the name and the options other
    than the method's defaults, :func:`~synaprune.bench.method_label`); each bar is labelled
    with successes/runs and the median final loss, so that panels where every method fails
    still say something. Each bar is split into the shares of the kinds of
    :mod:`synaprune.bench.kinds` (``global`` first, so its length is the success rate; runs
    stored without a kind are the grey "not recorded" part).

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
                             figsize=(9, 1.1 + len(problems) * (0.8 + 0.28 * height)))
    for ax, problem in zip(axes[:, 0], problems, strict=True):
        group = rows[problem][::-1]  # best at the top
        y = list(range(len(group)))
        rates = [s.success_rate for s in group]
        low = [s.success_rate - s.ci_low for s in group]
        high = [s.ci_high - s.success_rate for s in group]
        left = [0.0] * len(group)
        for name, colour in zip(KIND_FIELDS, _KIND_COLOURS, strict=True):
            share = [getattr(s, name) / s.runs for s in group]
            if not any(share):
                continue
            label = name[len("kind_"):].replace("_", " ")
            ax.barh(y, share, left=left, color=colour, alpha=0.7,
                    label=KIND_LABELS.get(label, label))
            left = [a + b for a, b in zip(left, share, strict=True)]
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
    axes[-1, 0].set_xlabel("share of runs by kind; global = success rate (bars: its 95% "
                           "Wilson interval)")
    handles: list = []
    names: list[str] = []
    for ax in axes[:, 0]:  # one legend, under the panels, for the kinds of every panel
        for h, name in zip(*ax.get_legend_handles_labels(), strict=True):
            if name not in names:
                handles.append(h)
                names.append(name)
    if handles:
        fig.legend(handles, names, fontsize=7, loc="lower center", ncol=len(handles),
                   frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    # leave the top 0.4 inch for the title, above the first panel's own, and the bottom 0.3
    # inch for the legend
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, 0.3 / height if handles else 0, 1,
                           1 - 0.4 / height if title else 1))
    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
