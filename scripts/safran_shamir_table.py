"""Per-k table for the Safran & Shamir (2018) reproduction, from a `synaprune bench` database.

Read-only on the database. Each run is counted by its kind (`synaprune.bench.kinds`): the kind
stored with it, or, for a run stored before kinds were (an older database), the kind computed
now by the same library function from its stored status, final loss, final gradient norm and
parameters (Lanczos on the exact-loss Hessian where the gradient is small; such runs cannot be
called unstable, since the loss at every step was not stored). The spurious-minimum column is
the share of all runs, with its Wilson interval.

Usage: python scripts/safran_shamir_table.py out/safran_shamir.db --budget 4000 --method gd:lr=0.5
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import Counter

from synaprune.bench import wilson_interval
from synaprune.bench.kinds import KIND_LABELS, KINDS, classify
from synaprune.bench.methods import get_method
from synaprune.bench.store import ResultStore
from synaprune.problems import get_problem


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("--budget", type=int, default=4000)
    ap.add_argument("--method", default="gd:lr=0.5")
    ap.add_argument("--grad-tol", type=float, default=None,
                    help="absolute gradient tolerance for runs classified now (default: the "
                         "library's relative one)")
    ap.add_argument("--hessian", action="store_true",
                    help="accepted for old commands; the Hessian check is always made where "
                         "the gradient is small")
    args = ap.parse_args()
    method = get_method(args.method).spec
    store = ResultStore(args.db, readonly=True)
    rows = [r for r in store.rows(["teacher-student"])
            if r["method"] == method and r["budget"] == args.budget]
    by_k: dict[int, list] = {}
    for r in rows:
        by_k.setdefault(int(r["problem_params"]["k"]), []).append(r)
    print(f"method {method}, budget {args.budget} steps\n")
    head = ("| k | runs | success | 95% Wilson CI | spurious minimum | "
            + " | ".join(KIND_LABELS[k] for k in KINDS[2:])
            + " | classified now | min eig of spurious minima | median loss of failures |")
    print(head)
    print("|" + "|".join(["---"] * (head.count("|") - 1)) + "|")
    details = []
    for k in sorted(by_k):
        group = by_k[k]
        problem = get_problem(group[0]["problem"])
        kinds, eigs, now = {}, {}, 0
        for r in group:
            kinds[r["id"]], eigs[r["id"]] = r["kind"], r["min_eig"]
            if r["kind"] is None:
                out = classify(problem, status=r["status"], final_loss=r["final_loss"],
                               final_grad_norm=r["final_grad_norm"],
                               params=store.load_params(r["id"]), grad_tol=args.grad_tol,
                               seed=r["seed"])
                kinds[r["id"]], eigs[r["id"]] = out.kind, out.min_eig
                now += 1
        counts = Counter(kinds.values())
        n = len(group)
        wins = counts["global"]
        lo, hi = wilson_interval(wins, n)
        spurious = [r for r in group if kinds[r["id"]] == "spurious"]
        slo, shi = wilson_interval(len(spurious), n)
        fails = [r["final_loss"] for r in group
                 if kinds[r["id"]] != "global" and math.isfinite(r["final_loss"])]
        spurious_eigs = [eigs[r["id"]] for r in spurious if eigs[r["id"]] is not None]
        cells = [str(k), str(n), f"{100 * wins / n:.1f}% ({wins})",
                 f"[{100 * lo:.1f}%, {100 * hi:.1f}%]",
                 f"{100 * len(spurious) / n:.1f}% ({len(spurious)}) "
                 f"[{100 * slo:.1f}%, {100 * shi:.1f}%]",
                 *(str(counts[kind]) for kind in KINDS[2:]), str(now),
                 "-" if not spurious_eigs else
                 f"{min(spurious_eigs):.2g} .. {max(spurious_eigs):.2g}",
                 "-" if not fails else f"{statistics.median(fails):.4g}"]
        print("| " + " | ".join(cells) + " |")
        values = Counter(f"{r['final_loss']:.4g}" for r in spurious)
        moving = [r["seed"] for r in group if kinds[r["id"]] == "moving"]
        details.append(f"k={k}: spurious loss values {dict(values.most_common(6))}"
                       + (f"; still-moving seeds {moving}" if moving else ""))
    print()
    print("\n".join(details))
    store.close()


if __name__ == "__main__":
    main()
