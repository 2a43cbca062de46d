"""safran-shamir: the share of gradient-descent runs that end in a spurious minimum, per k.

The setup of Safran & Shamir (ICML 2018) as issue 9 quotes it: teacher-student k = n = d
(``teacher-student:k=K``, exact Gaussian population loss, output weights fixed to 1),
Xavier-normal initialisation (the problem's own), full-batch gradient descent with step 5/k,
run until the gradient norm is small or a cap. The authors' shares from 500 runs per k (k = 6
to 12) are in :data:`AUTHORS`.

Protocol here (the lab's runner, :func:`synaprune.bench.run_seeds`, seeds 0, 1, ...): a run
stops at success (loss <= 1e-3), divergence, once its gradient norm is at most ``grad_tol``
(the lab's "until converged" rule), or at its step cap; every run is then named by the lab's
classification (:func:`synaprune.bench.kinds.classify_results`, docs/definitions.md):
``spurious`` when the gradient is small and the Hessian has no negative eigenvalue, ``saddle``
with one, ``moving`` when the gradient is still above ``grad_tol`` at the cap (unresolved: the
spurious share is then a lower bound, and the table says how many), ``unstable``,
``diverged``.

Cells are chunks of seeds of one k (one seed-batched run each), so the table can be resumed.
``summarize`` gives, per k: runs, the spurious share with its 95% Wilson interval, the
authors' share and whether ours is within 3 standard errors of it (the standard error of the
difference of two independent proportions, ours on n runs and theirs on 500), and the cost.
"""

from __future__ import annotations

import math
import pathlib
import time
from typing import Any

NAME = "safran-shamir"
SEED = "issue 9"
CLAIM = ("Gradient descent (step 5/k, Xavier normal) on the teacher-student problem k = n = d "
         "ends in a spurious minimum as often as Safran & Shamir (2018) report, within 3 "
         "standard errors for k = 6..12, and more often as k grows.")
VERSION = "2"  # 2: until converged, named by the lab's classification

# The authors' spurious shares (500 runs per k), as issue 9 quotes them.
AUTHORS: dict[int, float] = {6: 0.0, 7: 0.054, 8: 0.114, 9: 0.222, 10: 0.320, 11: 0.474,
                             12: 0.538}
AUTHORS_RUNS = 500
GRAD_TOL = 1e-6
KINDS = ("global", "spurious", "saddle", "moving", "unstable", "diverged")
_CHUNK = 200  # seeds per cell: one batch, so the fixed cost per step is paid once

# k -> (seeds, step cap): the authors' 500 seeds where their values exist, 200 beyond (time on
# the project machine, docs/results.md); with the until-converged rule a batch ends when its
# last seed has converged or reached the cap, so the cap matters only for slow runs.
_FULL: dict[int, tuple[int, int]] = {
    **{k: (500, 2500) for k in range(6, 13)},
    **{k: (200, 5000) for k in range(13, 21)},
}
_QUICK: dict[int, tuple[int, int]] = {6: (25, 2000), 8: (25, 2000), 10: (25, 2000)}


def cells(quick: bool) -> list[dict[str, Any]]:
    """One cell per chunk of at most 200 seeds of one k, k ascending (an interrupted run has
    the k that the authors' values cover first)."""
    plan = _QUICK if quick else _FULL
    return [{"k": k, "seed_start": start, "seeds": min(_CHUNK, seeds - start), "lr": 5.0 / k,
             "steps": steps, "grad_tol": GRAD_TOL}
            for k, (seeds, steps) in plan.items() for start in range(0, seeds, _CHUNK)]


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Train the cell's seeds together, then name how each failed run ended."""
    from synaprune.bench import get_method, run_seeds
    from synaprune.bench.kinds import classify_results
    from synaprune.problems import get_problem

    problem = get_problem(f"teacher-student:k={cell['k']}")
    method = get_method("gd", lr=cell["lr"])
    seeds = range(cell["seed_start"], cell["seed_start"] + cell["seeds"])
    start = time.perf_counter()
    results = run_seeds(problem, method, seeds, cell["steps"], until_converged=True,
                        grad_tol=cell["grad_tol"], classify=False)
    train = time.perf_counter() - start
    start = time.perf_counter()
    classify_results(problem, results, cell["grad_tol"])
    classify = time.perf_counter() - start
    counts = {kind: sum(r.kind == kind for r in results) for kind in KINDS}
    spurious = [r for r in results if r.kind == "spurious"]
    moving = [r for r in results if r.kind == "moving"]
    return {
        "runs": len(results), **counts,
        "seed_steps": sum(r.steps for r in results),
        "train_s": train, "classify_s": classify,
        "min_spurious_loss": min((r.final_loss for r in spurious), default=None),
        "max_spurious_grad": max((r.final_grad_norm for r in spurious), default=None),
        "min_spurious_eig": min((r.min_eig for r in spurious), default=None),
        "max_moving_grad": max((r.final_grad_norm or math.nan for r in moving), default=None),
        "moving_seeds": " ".join(str(r.seed) for r in moving),
    }


def _wilson(successes: int, n: int) -> tuple[float, float]:
    from synaprune.bench import wilson_interval

    return wilson_interval(successes, n)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per k: the spurious share with its interval, the authors' share, within 3 SE, cost."""
    table = []
    for k in sorted({r["k"] for r in rows}):
        group = [r for r in rows if r["k"] == k]
        n = sum(r["runs"] for r in group)
        counts = {kind: sum(r.get(kind, 0) for r in group) for kind in KINDS}
        share = counts["spurious"] / n
        low, high = _wilson(counts["spurious"], n)
        theirs = AUTHORS.get(k)
        within = None
        if theirs is not None:
            se = math.sqrt(share * (1 - share) / n + theirs * (1 - theirs) / AUTHORS_RUNS)
            within = abs(share - theirs) <= 3 * se
        train = sum(r["train_s"] for r in group)
        steps = sum(r["seed_steps"] for r in group)
        eigs = [r["min_spurious_eig"] for r in group if r["min_spurious_eig"] is not None]
        losses = [r["min_spurious_loss"] for r in group if r["min_spurious_loss"] is not None]
        table.append({
            "k": k, "runs": n, **counts, "spurious_share": share, "low": low, "high": high,
            "authors": theirs, "within_3se": within, "steps": group[0]["steps"],
            "train_s": train, "classify_s": sum(r["classify_s"] for r in group),
            "s_per_run": train / n, "us_per_seed_step": 1e6 * train / max(steps, 1),
            "min_spurious_eig": min(eigs) if eigs else None,
            "min_spurious_loss": min(losses) if losses else None,
        })
    compared = [t for t in table if t["within_3se"] is not None]
    held = None if not compared else all(t["within_3se"] for t in compared)
    parts = [f"k={t['k']}: {100 * t['spurious_share']:.1f}%"
             + (f" (authors {100 * t['authors']:.1f}%{'' if t['within_3se'] else ', outside 3 SE'})"
                if t["authors"] is not None else "")
             + (f" +{t['moving']} moving" if t["moving"] else "") for t in table]
    verdict = "spurious share per k: " + "; ".join(parts)
    return {"held": held, "verdict": verdict, "table": table}


def table_markdown(summary: dict[str, Any]) -> str:
    """The per-k table of ``summarize`` as Markdown (for docs/results.md)."""
    lines = ["| k = n = d | runs | step cap | spurious (95% Wilson) | authors | within 3 SE "
             "| global | still moving | saddle | diverged | smallest spurious loss "
             "| smallest Hessian eig. (spurious) | train s/run | classify s |",
             "|---:|---:|---:|---|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in summary["table"]:
        def fmt(value: Any, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        authors = "-" if t["authors"] is None else f"{100 * t['authors']:.1f}%"
        within = {None: "-", True: "yes", False: "**no**"}[t["within_3se"]]
        lines.append(
            f"| {t['k']} | {t['runs']} | {t['steps']} | {100 * t['spurious_share']:.1f}% "
            f"({t['spurious']}) [{100 * t['low']:.1f}, {100 * t['high']:.1f}] | {authors} | "
            f"{within} | {t['global']} | {t['moving']} | {t['saddle']} | {t['diverged']} | "
            f"{fmt(t['min_spurious_loss'], '.4g')} | {fmt(t['min_spurious_eig'], '.2g')} | "
            f"{t['s_per_run']:.3f} | {t['classify_s']:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: pathlib.Path) -> None:
    """Spurious share against k (ours with Wilson intervals, the authors'), and cost per k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarize(rows)["table"]
    ks = [t["k"] for t in table]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    share = [100 * t["spurious_share"] for t in table]
    err = [[s - 100 * t["low"] for s, t in zip(share, table, strict=True)],
           [100 * t["high"] - s for s, t in zip(share, table, strict=True)]]
    ax.errorbar(ks, share, yerr=err, marker="o", capsize=3, label="this lab, 95% Wilson")
    upper = [100 * (t["spurious"] + t["moving"]) / t["runs"] for t in table]
    if any(t["moving"] for t in table):
        ax.plot(ks, upper, "v", color="C0", alpha=0.5, label="+ runs still moving at the cap")
    ours = [k for k in ks if k in AUTHORS]
    ax.plot(ours, [100 * AUTHORS[k] for k in ours], "s", color="C3",
            label="Safran & Shamir (500 runs)")
    ax.set_xlabel("k = n = d")
    ax.set_ylabel("runs ending in a spurious minimum (%)")
    ax.set_title("GD, step 5/k, Xavier normal")
    ax.legend(fontsize=8)
    bx.plot(ks, [t["us_per_seed_step"] for t in table], "o-", label="per seed-step (us)")
    bx.plot(ks, [1e3 * t["s_per_run"] for t in table], "s-", label="per run (ms)")
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("k")
    bx.set_title("wall time (seed-batched runner, 1 thread, shared machine)")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
