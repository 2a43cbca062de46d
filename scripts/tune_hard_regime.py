"""Report of the equal-effort tuning of the hard-regime study (``scripts/tune_hard_regime.sh``).

Reads ``OUT/e<k>.db`` (and ``OUT/o<k>.db``, the part "others") and prints, per method family
(gd, escape, gd-restarts; perturbed-gd, gradient-noise, sam), one row per setting: global runs
and spurious minima per k (Wilson intervals), the runs still moving at the budget (and
unstable or diverged, "u/d", where there are any), the totals, and the winner by the protocol
of docs/tuning.md (most global runs summed over the problems; ties: the lower sum of median
final losses). Settings are the script's multiples c of GD's step 5/k, so one setting means
the same on every k.

    python scripts/tune_hard_regime.py OUT
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from synaprune.bench.store import ResultStore
from synaprune.bench.summary import summarize, wilson_interval


def setting(name: str, options: dict[str, Any], k: int, budget: int) -> tuple[str, str]:
    """(family, setting label) of a tuning run, the step written as c x 5/k."""
    c = f"c={options['lr'] * k / 5:.3g}"
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
    raise ValueError(f"Unexpected method {name!r} in a tuning database")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    table: dict[str, dict[str, dict[int, Any]]] = defaultdict(lambda: defaultdict(dict))
    ks: list[int] = []
    # e<k>.db: gd, escape, gd-restarts; o<k>.db: the other baselines (the part "others")
    for db in sorted([*args.out.glob("e*.db"), *args.out.glob("o*.db")],
                     key=lambda p: (p.stem[0], int(p.stem[1:]))):
        with ResultStore(db, readonly=True) as store:
            rows = store.rows()
        if not rows:
            continue
        meta = {(r["problem"], r["method"], r["budget"]): r for r in rows}
        for s in summarize(rows):
            r = meta[(s.problem, s.method, s.budget)]
            k = int(r["problem_params"]["k"])
            family, label = setting(r["method_name"], r["method_options"], k, s.budget)
            table[family][label][k] = s
            if k not in ks:
                ks.append(k)
    for family, settings in table.items():
        print(f"**{family}**\n")
        print("| setting | " + " | ".join(f"k={k}: global, spurious [95 % CI], moving"
                                         for k in ks)
              + " | global, total | spurious, total |")
        print("|---|" + "---|" * len(ks) + "---:|---:|")
        scored = []
        for label, per_k in settings.items():
            cells = []
            for k in ks:
                s = per_k.get(k)
                if s is None:
                    cells.append("-")
                    continue
                low, high = wilson_interval(s.kind_spurious, s.runs)
                cells.append(f"{s.kind_global}/{s.runs}, {s.kind_spurious} "
                             f"[{100 * low:.0f}, {100 * high:.0f} %], {s.kind_moving}"
                             + (f", {s.kind_unstable + s.kind_diverged} u/d"
                                if s.kind_unstable + s.kind_diverged else ""))
            total = sum(s.kind_global for s in per_k.values())
            spurious = sum(s.kind_spurious for s in per_k.values())
            loss = sum(s.median_final_loss for s in per_k.values())
            complete = len(per_k) == len(ks)
            scored.append((complete, total, -loss, label))
            print(f"| {label} | " + " | ".join(cells) + f" | {total} | {spurious} |")
        best = max(scored)
        print(f"\nwinner: {best[3]} ({best[1]} global runs)"
              + ("" if best[0] else " (incomplete: not every k has run)") + "\n")


if __name__ == "__main__":
    main()
