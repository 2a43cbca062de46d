"""Report of an equal-effort tuning (scripts/tune_hard_regime.sh, scripts/tune_autoencoder.sh).

Reads every ``OUT/*.db`` (teacher-student: ``e<k>.db`` and ``o<k>.db``, the part "others";
the autoencoder: ``ae.db``) and prints, per method family (gd, escape, gd-restarts;
perturbed-gd, gradient-noise, sam), one row per setting: global runs and spurious minima per
problem (Wilson intervals), the runs still moving at the budget (and unstable or diverged,
"u/d", where there are any), the totals, and the winner by the protocol of docs/tuning.md (most
global runs summed over the problems; ties: the lower sum of median final losses). On
teacher-student the step is written as the multiple c of GD's step 5/k, so one setting means
the same on every k; elsewhere it is the learning rate.

    python scripts/tune_hard_regime.py OUT
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from synaprune.bench.store import ResultStore
from synaprune.bench.summary import summarize, wilson_interval


def setting(name: str, options: dict[str, Any], k: int | None, budget: int) -> tuple[str, str]:
    """(family, setting label) of a tuning run; the step as c x 5/k on teacher-student (k),
    as the learning rate elsewhere (k None)."""
    c = f"lr={options['lr']:g}" if k is None else f"c={options['lr'] * k / 5:.3g}"
    if name == "gd":
        return "gd", c
    if name == "gd-restarts":
        return "gd-restarts", f"R={options['restarts']}, {c}"
    if name == "perturbed-gd":
        return name, f"radius={options['radius']:g}, threshold={options['threshold']:g}, {c}"
    if name == "gradient-noise":
        return name, f"eta={options['eta']:g}, {c}"
    if name == "sam":
        return name, f"rho={options['rho']:g}, {c}"
    if name == "synaprune-b":
        return "escape (mechanism B)", (f"sigma_0={options['noise']:g}, noise over "
                                        f"{options['noise_steps'] / budget:.0%}, {c}")
    if name == "synaprune-a":
        return name, f"blend={options['blend']:g}, {c}"
    if name == "synaprune-c":
        return name, f"beta={options['beta']:g}, {c}"
    if name == "synaprune-escape":
        return "escape (mechanism B)", f"the preset (sigma_0=0.2, noise over 80%), {c}"
    raise ValueError(f"Unexpected method {name!r} in a tuning database")


def cell_of(row: dict[str, Any]) -> tuple[str, int | None]:
    """(column label, k) of a stored run: "k=8" on teacher-student, the problem's name
    otherwise."""
    if row["problem_name"] == "teacher-student":
        k = int(row["problem_params"]["k"])
        return f"k={k}" + ("" if row["problem_params"]["exact"] else ", sampled"), k
    return row["problem_name"], None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    table: dict[str, dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    cells: list[str] = []
    # e<k>.db: gd, escape, gd-restarts; o<k>.db: the other baselines (the part "others")
    for db in sorted(args.out.glob("*.db"),
                     key=lambda p: (p.stem[0], int(p.stem[1:]) if p.stem[1:].isdigit() else 0)):
        with ResultStore(db, readonly=True) as store:
            rows = store.rows()
        if not rows:
            continue
        meta = {(r["problem"], r["method"], r["budget"]): r for r in rows}
        for s in summarize(rows):
            r = meta[(s.problem, s.method, s.budget)]
            cell, k = cell_of(r)
            family, label = setting(r["method_name"], r["method_options"], k, s.budget)
            table[family][label][cell] = s
            if cell not in cells:
                cells.append(cell)
    for family, settings in table.items():
        print(f"**{family}**\n")
        print("| setting | " + " | ".join(f"{c}: global, spurious [95 % CI], moving"
                                         for c in cells)
              + " | global, total | spurious, total |")
        print("|---|" + "---|" * len(cells) + "---:|---:|")
        scored = []
        for label, per_k in settings.items():
            row = []
            for c in cells:
                s = per_k.get(c)
                if s is None:
                    row.append("-")
                    continue
                low, high = wilson_interval(s.kind_spurious, s.runs)
                row.append(f"{s.kind_global}/{s.runs}, {s.kind_spurious} "
                             f"[{100 * low:.0f}, {100 * high:.0f} %], {s.kind_moving}"
                             + (f", {s.kind_unstable + s.kind_diverged} u/d"
                                if s.kind_unstable + s.kind_diverged else ""))
            total = sum(s.kind_global for s in per_k.values())
            spurious = sum(s.kind_spurious for s in per_k.values())
            loss = sum(s.median_final_loss for s in per_k.values())
            complete = len(per_k) == len(cells)
            scored.append((complete, total, -loss, label))
            print(f"| {label} | " + " | ".join(row) + f" | {total} | {spurious} |")
        best = max(scored)
        print(f"\nwinner: {best[3]} ({best[1]} global runs)"
              + ("" if best[0] else " (incomplete: not every k has run)") + "\n")


if __name__ == "__main__":
    main()
