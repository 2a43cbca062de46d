"""Per-k table for the Safran & Shamir (2018) reproduction, from a `synaprune bench` database.

Read-only on the database. A failed run (loss above the problem's tolerance at the end) is
split by the gradient norm stored in its curve at the last recorded step before the end
(the final curve point carries no gradient norm):

* spurious minimum: last recorded gradient norm < --gn-threshold;
* out of budget:    last recorded gradient norm >= --gn-threshold (still moving).

With --hessian, the smallest eigenvalue of the exact-loss Hessian is computed at the stored
final parameters of every failed run, to tell minima (all eigenvalues > 0) from saddles.

The step-5/k protocol of the issue, with the classification, is one command:
``synaprune experiment safran-shamir`` (src/synaprune/experiments/safran_shamir.py).

Usage: python scripts/safran_shamir_table.py out/safran_shamir.db --budget 4000 --method gd:lr=0.5
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import Counter

import torch

from synaprune.bench import wilson_interval
from synaprune.bench._classify import hessian_eigenvalues
from synaprune.bench.methods import get_method
from synaprune.bench.store import ResultStore
from synaprune.problems import get_problem


def last_grad_norm(curve: list) -> tuple[int, float]:
    points = [p for p in curve if p[2] is not None]
    if not points:
        return -1, math.nan
    return int(points[-1][0]), float(points[-1][2])


def min_hessian_eig(problem, params: dict[str, torch.Tensor]) -> float:
    return float(hessian_eigenvalues(problem, params)[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("--budget", type=int, default=4000)
    ap.add_argument("--method", default="gd:lr=0.5")
    ap.add_argument("--gn-threshold", type=float, default=1e-8)
    ap.add_argument("--hessian", action="store_true")
    args = ap.parse_args()
    method = get_method(args.method).spec
    store = ResultStore(args.db, readonly=True)
    rows = [r for r in store.rows(["teacher-student"])
            if r["method"] == method and r["budget"] == args.budget]
    by_k: dict[int, list] = {}
    for r in rows:
        by_k.setdefault(int(r["problem_params"]["k"]), []).append(r)
    print(f"method {method}, budget {args.budget} steps, spurious = loss > tolerance and last "
          f"recorded gradient norm < {args.gn_threshold:g}\n")
    head = ("| k | runs | success | 95% Wilson CI | spurious minimum | out of budget | diverged "
            "| median final loss of failures | max last grad norm of failures |"
            + (" min Hessian eig of failures |" if args.hessian else ""))
    print(head)
    print("|" + "|".join(["---"] * (head.count("|") - 1)) + "|")
    details = []
    for k in sorted(by_k):
        group = by_k[k]
        n = len(group)
        wins = sum(r["success"] for r in group)
        lo, hi = wilson_interval(wins, n)
        fails = [r for r in group if not r["success"]]
        diverged = [r for r in fails if r["status"] == "diverged"]
        finite = [r for r in fails if r["status"] != "diverged"]
        gns = {r["id"]: last_grad_norm(r["curve"]) for r in finite}
        spurious = [r for r in finite if gns[r["id"]][1] < args.gn_threshold]
        budget = [r for r in finite if not gns[r["id"]][1] < args.gn_threshold]
        slo, shi = wilson_interval(len(spurious), n)
        med = statistics.median(r["final_loss"] for r in finite) if finite else math.nan
        maxgn = max((gns[r["id"]][1] for r in finite), default=math.nan)
        cells = [str(k), str(n), f"{100 * wins / n:.1f}% ({wins})",
                 f"[{100 * lo:.1f}%, {100 * hi:.1f}%]",
                 f"{100 * len(spurious) / n:.1f}% ({len(spurious)}) "
                 f"[{100 * slo:.1f}%, {100 * shi:.1f}%]",
                 f"{100 * len(budget) / n:.1f}% ({len(budget)})", str(len(diverged)),
                 "-" if not finite else f"{med:.4g}", "-" if not finite else f"{maxgn:.2g}"]
        if args.hessian:
            eigs = [min_hessian_eig(get_problem(group[0]["problem"]), store.load_params(r["id"]))
                    for r in spurious]
            positive = sum(e > 0 for e in eigs)
            cells.append("-" if not eigs else
                         f"{min(eigs):.2g} .. {max(eigs):.2g} ({positive}/{len(eigs)} > 0)")
        print("| " + " | ".join(cells) + " |")
        values = Counter(f"{r['final_loss']:.4g}" for r in spurious)
        details.append(f"k={k}: spurious loss values {dict(values.most_common(6))}"
                       + (f"; out-of-budget seeds {[r['seed'] for r in budget]}" if budget else ""))
    print()
    print("\n".join(details))
    store.close()


if __name__ == "__main__":
    main()
