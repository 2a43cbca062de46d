"""Tables and figure of the hard-regime study (docs/results.md, first section).

Reads the databases written by ``scripts/study_hard_regime.sh OUT`` (every ``OUT/*.db``) and
summarises them with the lab's own :func:`synaprune.bench.summary.summarize` (what
``synaprune results --format json [--at-cost C]`` prints), so every count here is one that
``results`` gives too. Prints Markdown tables: how runs ended at equal steps (share of each
kind, the spurious share with its 95 % Wilson interval), success at equal cost C, the spurious
ratio against gd (at the budget, and with the moving runs settled: ``--settled``, the JSON of
``scripts/settle_moving.py --json``), and the loss level and curvature of the spurious minima
found; draws the settled spurious share and the failure share against k per method.

    python scripts/study_hard_regime.py OUT [--cost C] [--plot docs/hard_regime.png]
        [--settled OUT/settled.json ...]
"""

from __future__ import annotations

import argparse
import json
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
         "gd, student k+1", "gd, student k+2",
         "perturbed-gd", "gradient-noise", "sam", "saddle-free-newton",
         "synaprune-b", "synaprune-a", "synaprune-c", "synaprune-ab", "synaprune-bc",
         "synaprune")


def collect(out: Path, cost: float | None,
            settled: dict[str, dict[str, int]] | None = None) -> list[dict[str, Any]]:
    """One record per (problem, method, budget) cell: the summaries at equal steps and at cost
    C (``cost``, or when None the cell's budget: gd's cost, one gradient a step), the final
    loss and smallest Hessian eigenvalue of its spurious runs, and (from ``settled``,
    ``scripts/settle_moving.py --json``) where its runs still moving at the budget end."""
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
            base = method_label(name, opts, k, n)
            cells.append(dict(
                mode=mode, n=n, k=k, budget=key[2], base=base, label=base,
                settled=(settled or {}).get("|".join(map(str, key))),
                lr=opts.get("lr"),
                steps=steps[key], cost=at_c[key], c=at_c[key].at_cost,
                spur_loss=statistics.median(r["final_loss"] for r in spur) if spur else None,
                spur_eig=statistics.median(r["min_eig"] for r in spur
                                           if r["min_eig"] is not None) if spur else None))
    # one method at two steps on one problem (A and C at GD's step and at their own): the
    # labels name the step, so the cells keep apart in every table and in the figure
    steps_of: dict[tuple[Any, ...], set[Any]] = {}
    for c in cells:
        steps_of.setdefault((c["mode"], c["n"], c["k"], c["budget"], c["base"]), set()).add(c["lr"])
    for c in cells:
        if len(steps_of[(c["mode"], c["n"], c["k"], c["budget"], c["base"])]) > 1:
            c["label"] = f"{c['base']} at lr {c['lr']:g}"
    cells.sort(key=lambda c: (c["mode"], c["n"], c["budget"], ORDER.index(c["base"]),
                              -(c["lr"] or 0)))
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


def eventual(c: dict[str, Any]) -> int | None:
    """Spurious at the budget plus the moving runs that end spurious (None: not settled)."""
    if c["settled"] is None:
        return None if c["steps"].kind_moving else c["steps"].kind_spurious
    return c["steps"].kind_spurious + c["settled"].get("spurious", 0)


def tables(cells: list[dict[str, Any]]) -> str:
    out = ["**Equal steps** (the budget, until converged; share of each kind, the "
           "spurious share with its 95 % Wilson interval)", "",
           "| problem | method (lr) | runs | global | spurious minimum | saddle | still moving "
           "| unstable | diverged | median cost |",
           "|---|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for c in cells:
        s = c["steps"]
        other = " | ".join(f"{getattr(s, 'kind_' + k)}" for k in KINDS[2:])
        out.append(f"| {problem_name(c)} | {c['base']} ({c['lr']}) | {s.runs} "
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
    out += ["", "**Spurious minima against gd on the same problem**, and what they are. "
            "*Settled*: the runs still moving at the budget continued with plain gd "
            "(`scripts/settle_moving.py`); spurious, settled = spurious at the budget + the "
            "moving runs that end in one",
            "", "| problem | method | spurious / gd's | moving: then global, spurious, other "
            "| spurious, settled / gd's | escape 5x fewer, settled? | median loss of its "
            "spurious minima | median smallest eigenvalue there |",
            "|---|---|---:|---:|---:|:---:|---:|---:|"]
    gd = {(c["mode"], c["n"], c["budget"]): c for c in cells if c["label"] == "gd"}

    def ratio(a: int | None, b: int | None) -> str:
        return "-" if a is None or not b else f"{a}/{b} = {a / b:.2f}"

    for c in cells:
        s, g = c["steps"], gd.get((c["mode"], c["n"], c["budget"]))
        e, ge = eventual(c), None if g is None else eventual(g)
        st = c["settled"]
        moving = "-" if not st or not st["at_budget"] else (
            f"{st.get('global', 0)}, {st.get('spurious', 0)}, "
            f"{st['at_budget'] - st.get('global', 0) - st.get('spurious', 0)}"
            + (" (of the unstable too)" if "unstable" in st.get("continued", "") else ""))
        if st is None and s.kind_moving:
            moving = "not settled"
        # the target is the preset's; a failed restarts run has its kept restart's kind
        five = "-" if g is None or c["label"] != "synaprune-escape" or e is None or not ge else (
            "yes" if 5 * e <= ge else "no")
        out.append(f"| {problem_name(c)} | {c['label']} "
                   f"| {ratio(s.kind_spurious, None if g is None else g['steps'].kind_spurious)} "
                   f"| {moving} | {ratio(e, ge)} | {five} "
                   f"| {fmt(c['spur_loss'], '.4g')} | {fmt(c['spur_eig'], '.2g')} |")
    return "\n".join(out)


def plot(cells: list[dict[str, Any]], path: Path) -> None:
    """Spurious share with the moving runs settled (top) and failure share, 1 - global
    (bottom), against k per method, with 95 % Wilson intervals; exact loss on the left, sampled
    on the right. The bottom row is needed to read the top one: a failed gd-restarts run has
    the kind of its kept restart (the lowest loss), so its spurious share alone says little."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in cells if c["budget"] == BUDGET]
    modes = [m for m in ("exact", "sampled") if any(c["mode"] == m for c in cells)]
    fig, axes = plt.subplots(2, len(modes), figsize=(6.5 + 3 * (len(modes) - 1), 7.5),
                             squeeze=False, sharey="row",
                             gridspec_kw={"width_ratios": [3, 1][:len(modes)]})
    markers = dict(zip(ORDER, "osv^DP<>*Xhpd123", strict=True))
    colors = [f"C{i}" for i in range(10)] + ["black", "darkgoldenrod", "teal", "indigo",
                                               "olive", "crimson"]  # one a method
    rows = (("spurious minima, moving runs settled", eventual),
            ("failed (not global)", lambda c: c["steps"].runs - c["steps"].kind_global))
    for col, mode in enumerate(modes):
        group = [c for c in cells if c["mode"] == mode]
        for row, (what, count) in enumerate(rows):
            ax = axes[row][col]
            labels = sorted({c["label"] for c in group}, key=lambda lab: (
                ORDER.index(next(c["base"] for c in group if c["label"] == lab)), lab))
            for label in labels:
                base = next(c["base"] for c in group if c["label"] == label)
                i = ORDER.index(base)
                pts = sorted((c["n"], count(c), c["steps"].runs) for c in group
                             if c["label"] == label and count(c) is not None)
                if not pts:
                    continue
                # a method at two steps: the smaller one (its own tuned step) drawn open
                own = any((c["lr"] or 0) < max(d["lr"] or 0 for d in group
                                                if d["base"] == base and d["n"] == c["n"]
                                                and d["k"] == c["k"])
                          for c in group if c["label"] == label)
                x = [k + 0.1 * (i - 6) + (0.05 if own else 0) for k, _, _ in pts]
                y = [100 * m / n for _, m, n in pts]
                ci = [wilson_interval(m, n) for _, m, n in pts]
                err = [[yy - 100 * lo for yy, (lo, _) in zip(y, ci, strict=True)],
                       [100 * hi - yy for yy, (_, hi) in zip(y, ci, strict=True)]]
                ax.errorbar(x, y, yerr=err, marker=markers[base], capsize=3, color=colors[i],
                            mfc="none" if own else colors[i],
                            linestyle="-" if len(pts) > 1 else "none", label=label)
            ax.set_xticks(sorted({c["n"] for c in group}))
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title("exact population loss, 500 seeds" if mode == "exact"
                             else "sampled, N = 2000, 200 seeds", fontsize=10)
            else:
                ax.set_xlabel("k = n (teacher width; the students k+1, k+2 at the teacher's k)"
                              if mode == "exact" else "k = n")
            if col == 0:
                ax.set_ylabel(f"{what}, % of runs", fontsize=9)
    legend: dict[str, Any] = {}  # every panel's methods (A and C are on the sampled one only)
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    # in the top right panel: on the sampled loss no spurious minimum is named, it is empty
    axes[0][-1].legend(list(legend.values()), list(legend), fontsize=6.5, loc="upper center",
                       ncol=1 if len(modes) > 1 else 2)
    fig.suptitle("teacher-student, step 5/k, 3,000 steps until converged\n"
                 "(95 % Wilson intervals; restarts: the kept restart's kind)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="directory of the study's databases")
    ap.add_argument("--cost", type=float, default=None,
                    help="equal-cost budget C in gradient-equivalents (default: each cell's "
                         "step budget, gd's cost)")
    ap.add_argument("--plot", type=Path, help="also draw the spurious share against k here")
    ap.add_argument("--settled", type=Path, nargs="+", default=[],
                    help="JSON files of scripts/settle_moving.py --json: where moving runs end")
    args = ap.parse_args()
    settled = {k: v for path in args.settled for k, v in json.loads(path.read_text()).items()}
    cells = collect(args.out, args.cost, settled)
    if not cells:
        raise SystemExit(f"no runs in {args.out}/*.db: run scripts/study_hard_regime.sh first")
    print(tables(cells))
    if args.plot:
        plot(cells, args.plot)


if __name__ == "__main__":
    main()
