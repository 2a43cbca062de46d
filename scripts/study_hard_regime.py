"""Tables and figure of the hard-regime study (docs/results.md, first section).

Reads the databases written by ``scripts/study_hard_regime.sh OUT`` (every ``OUT/*.db``) and
summarises them with the lab's own :func:`synaprune.bench.summary.summarize` (what
``synaprune results --format json [--at-cost C]`` prints), so every count here is one that
``results`` gives too. Prints Markdown tables: how runs ended at equal steps (share of each
kind, the spurious share with its 95 % Wilson interval), success at equal cost C, the spurious
ratio against gd, and the loss level and curvature of the spurious minima found; draws the
spurious share and the failure share against k per method.

    python scripts/study_hard_regime.py OUT [--cost C] [--plot docs/hard_regime.png]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from synaprune.bench.store import ResultStore
from synaprune.bench.summary import summarize, wilson_interval

BUDGET = 3000  # the study's step budget (scripts/study_hard_regime.sh); others are labelled
KINDS = ("global", "spurious", "saddle", "moving", "unstable", "diverged")


def problem_key(params: dict[str, Any]) -> tuple[str, int, int]:
    """(``exact`` or ``sampled``, teacher width n, student width k) of a teacher-student spec."""
    return ("exact" if params["exact"] else "sampled", int(params["n"]), int(params["k"]))


def method_label(name: str, options: dict[str, Any], student: int, teacher: int) -> str:
    """Short label: the method, R for restarts, the student's width when it is not the teacher's."""
    if name == "gd-restarts":
        return f"gd-restarts R={options['restarts']}"
    if name == "gd" and student > teacher:
        return f"gd, student k+{student - teacher}"
    return name


ORDER = ("gd", "synaprune-escape", "gd-restarts R=2", "gd-restarts R=4",
         "gd, student k+1", "gd, student k+2")


def collect(out: Path, cost: float | None) -> list[dict[str, Any]]:
    """One record per (problem, method, budget) cell: the summaries at equal steps and at cost
    C (``cost``, or when None the cell's budget: gd's cost, one gradient a step), and the final
    loss and smallest Hessian eigenvalue of its spurious runs."""
    cells = []
    for db in sorted(out.glob("*.db")):
        with ResultStore(db, readonly=True) as store:
            rows = store.rows()
        steps = {(s.problem, s.method, s.budget): s for s in summarize(rows)}
        at_c = {(s.problem, s.method, s.budget): s
                for b in {r["budget"] for r in rows}
                for s in summarize([r for r in rows if r["budget"] == b],
                                   at_cost=float(b) if cost is None else cost)}
        meta = {}
        for r in rows:
            cell = (r["problem"], r["method"], r["budget"])
            meta.setdefault(cell, (r["problem_params"], r["method_name"], r["method_options"],
                                   []))[3].append(r)
        for key, (pp, name, opts, runs) in meta.items():
            mode, n, k = problem_key(pp)
            spur = [r for r in runs if r["kind"] == "spurious"]
            cells.append(dict(
                mode=mode, n=n, k=k, budget=key[2], label=method_label(name, opts, k, n),
                lr=opts.get("lr"),
                steps=steps[key], cost=at_c[key], c=at_c[key].at_cost,
                spur_loss=statistics.median(r["final_loss"] for r in spur) if spur else None,
                spur_eig=statistics.median(r["min_eig"] for r in spur
                                           if r["min_eig"] is not None) if spur else None,
                moving_grad=(statistics.median(r["final_grad_norm"] for r in runs
                                               if r["kind"] == "moving"
                                               and r["final_grad_norm"] is not None)
                             if any(r["kind"] == "moving" for r in runs) else None)))
    cells.sort(key=lambda c: (c["mode"], c["n"], c["budget"], ORDER.index(c["label"])))
    return cells


def pct(count: int, n: int) -> str:
    """``count`` of ``n`` as a share with its Wilson interval."""
    low, high = wilson_interval(count, n)
    return f"{100 * count / n:.1f} % ({count}) [{100 * low:.1f}, {100 * high:.1f}]"


def problem_name(c: dict[str, Any]) -> str:
    """``exact k=8``, ``sampled k=8, N=2000``; the budget when it is not the study's 3000."""
    return (f"{c['mode']} k={c['n']}" + (", N=2000" if c["mode"] == "sampled" else "")
            + (f", {c['budget']} steps" if c["budget"] != BUDGET else ""))


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted, or ``-`` when there is none."""
    return "-" if value is None else format(value, spec)


def tables(cells: list[dict[str, Any]]) -> str:
    out = ["**Equal steps** (the budget, until converged; share of each kind, the "
           "spurious share with its 95 % Wilson interval)", "",
           "| problem | method (lr) | runs | global | spurious minimum | saddle | still moving "
           "| unstable | diverged | median cost |",
           "|---|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for c in cells:
        s = c["steps"]
        other = " | ".join(f"{getattr(s, 'kind_' + k)}" for k in KINDS[2:])
        out.append(f"| {problem_name(c)} | {c['label']} ({c['lr']}) | {s.runs} "
                   f"| {pct(s.kind_global, s.runs)} | **{pct(s.kind_spurious, s.runs)}** "
                   f"| {other} | {s.median_cost:.0f} |")
    out += ["", "**Equal cost** C gradient-equivalents (`--at-cost C`)",
            "", "| problem | method | C | success at C | unfinished at C "
            "| median steps to success |", "|---|---|---:|---|---:|---:|"]
    for c in cells:
        s = c["cost"]
        med = "-" if s.median_steps_to_success is None else f"{s.median_steps_to_success:.0f}"
        out.append(f"| {problem_name(c)} | {c['label']} | {c['c']:.0f} "
                   f"| {pct(s.successes, s.runs)} "
                   f"| {s.kind_unfinished} | {med} |")
    out += ["", "**Spurious minima against gd on the same problem**, and what they are",
            "", "| problem | method | spurious / gd's | escape 5x fewer? "
            "| median loss of its spurious "
            "minima | median smallest eigenvalue there | median gradient norm, still moving |",
            "|---|---|---:|:---:|---:|---:|---:|"]
    gd = {(c["mode"], c["n"], c["budget"]): c["steps"] for c in cells if c["label"] == "gd"}
    for c in cells:
        s, g = c["steps"], gd.get((c["mode"], c["n"], c["budget"]))
        ratio = "-" if g is None or g.kind_spurious == 0 else (
            f"{s.kind_spurious}/{g.kind_spurious} = {s.kind_spurious / g.kind_spurious:.2f}")
        # the target is the preset's; a failed restarts run has its kept restart's kind, so
        # its spurious count is not comparable (docs/results.md)
        five = "-" if g is None or c["label"] != "synaprune-escape" else (
            "yes" if 5 * s.kind_spurious <= g.kind_spurious else "no")
        out.append(f"| {problem_name(c)} | {c['label']} | {ratio} | {five} "
                   f"| {fmt(c['spur_loss'], '.4g')} | {fmt(c['spur_eig'], '.2g')} "
                   f"| {fmt(c['moving_grad'], '.1e')} |")
    return "\n".join(out)


def plot(cells: list[dict[str, Any]], path: Path) -> None:
    """Spurious share (top) and failure share, 1 - global (bottom), against k per method, with
    95 % Wilson intervals; exact loss on the left, sampled on the right. The bottom row is
    needed to read the top one: a failed gd-restarts run has the kind of its kept restart (the
    lowest loss), often one still moving, so its spurious share alone says little."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in cells if c["budget"] == BUDGET]
    modes = [m for m in ("exact", "sampled") if any(c["mode"] == m for c in cells)]
    fig, axes = plt.subplots(2, len(modes), figsize=(6.5 + 3 * (len(modes) - 1), 7.5),
                             squeeze=False, sharey="row",
                             gridspec_kw={"width_ratios": [3, 1][:len(modes)]})
    markers = dict(zip(ORDER, "osv^DP", strict=True))
    rows = (("spurious minima", lambda s: s.kind_spurious),
            ("failed (not global)", lambda s: s.runs - s.kind_global))
    for col, mode in enumerate(modes):
        group = [c for c in cells if c["mode"] == mode]
        for row, (what, count) in enumerate(rows):
            ax = axes[row][col]
            for i, label in enumerate(ORDER):
                pts = sorted((c["n"], c["steps"]) for c in group if c["label"] == label)
                if not pts:
                    continue
                x = [k + 0.18 * (i - 2.5) for k, _ in pts]
                y = [100 * count(s) / s.runs for _, s in pts]
                ci = [wilson_interval(count(s), s.runs) for _, s in pts]
                err = [[yy - 100 * lo for yy, (lo, _) in zip(y, ci, strict=True)],
                       [100 * hi - yy for yy, (_, hi) in zip(y, ci, strict=True)]]
                ax.errorbar(x, y, yerr=err, marker=markers[label], capsize=3,
                            linestyle="-" if len(pts) > 1 else "none", label=label)
            ax.set_xticks(sorted({c["n"] for c in group}))
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title("exact population loss" if mode == "exact"
                             else "sampled, N = 2000", fontsize=10)
            else:
                ax.set_xlabel("k = n (teacher width; the students k+1, k+2 at the teacher's k)"
                              if mode == "exact" else "k = n")
            if col == 0:
                ax.set_ylabel(f"{what}, % of 200 runs")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("teacher-student, step 5/k, 3,000 steps until converged, seeds 0-199\n"
                 "(95 % Wilson intervals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="directory of the study's databases")
    ap.add_argument("--cost", type=float, default=None,
                    help="equal-cost budget C in gradient-equivalents (default: each cell's "
                         "step budget, gd's cost)")
    ap.add_argument("--plot", type=Path, help="also draw the spurious share against k here")
    args = ap.parse_args()
    cells = collect(args.out, args.cost)
    if not cells:
        raise SystemExit(f"no runs in {args.out}/*.db: run scripts/study_hard_regime.sh first")
    print(tables(cells))
    if args.plot:
        plot(cells, args.plot)


if __name__ == "__main__":
    main()
