"""How each run of a `synaprune bench` database ended, for the escape-preset study (issue 9).

Read-only on the database. Per (problem, method, budget): the share of runs that reached the
global loss, that failed without diverging, and that diverged, each with its 95 % Wilson
interval; a failed run is split by its stored final gradient norm (full batch, at the final
parameters) and, with --hessian, the smallest eigenvalue of the dense Hessian of the training
loss there (the models are small: k = 12 has 144 parameters):

* converged: final gradient norm < --gn-threshold; a spurious minimum when the smallest
  eigenvalue is > 0, a saddle when it is < 0 (without --hessian: "converged", unnamed);
* still moving: final gradient norm >= --gn-threshold (the budget ran out first).

Usage: python scripts/escape_report.py out/escape_eval.db [--hessian] [--gn-threshold 1e-6]
"""

from __future__ import annotations

import argparse
import copy
from collections import defaultdict

import torch

from synaprune.bench import wilson_interval
from synaprune.bench.methods import method_label
from synaprune.bench.store import ResultStore
from synaprune.problems import get_problem


def min_hessian_eig(problem, params: dict[str, torch.Tensor]) -> float:
    """Smallest eigenvalue of the dense Hessian of the full training loss at ``params``."""
    model = problem.build_model(0)
    buffers = {k: v.to(torch.float64) for k, v in model.named_buffers()}  # fixed, per problem
    base = copy.deepcopy(model).to("meta")
    names = list(params)
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]

    def f(flat: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(names, (v.view(s) for v, s in
                                 zip(flat.split(sizes), shapes, strict=True)), strict=True))
        return problem.functional_loss(base, parts, buffers)

    flat = torch.cat([params[k].reshape(-1).to(torch.float64) for k in names])
    return float(torch.linalg.eigvalsh(torch.func.hessian(f)(flat)).min())


def _share(count: int, n: int) -> str:
    lo, hi = wilson_interval(count, n)
    return f"{count}/{n} = {100 * count / n:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("--gn-threshold", type=float, default=1e-6)
    ap.add_argument("--hessian", action="store_true")
    args = ap.parse_args()
    store = ResultStore(args.db, readonly=True)
    cells: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in store.rows():
        cells[(r["problem"], r["method"], r["budget"])].append(r)
    print("| problem | method | steps | global | failed | of which converged "
          "(spurious/saddle) | still moving | diverged |")
    print("|---|---|---|---|---|---|---|---|")
    for (problem_spec, method, budget), rows in sorted(cells.items()):
        n = len(rows)
        ok = sum(r["status"] == "ok" for r in rows)
        div = sum(r["status"] == "diverged" for r in rows)
        failed = [r for r in rows if r["status"] == "budget"]
        conv = [r for r in failed if r["final_grad_norm"] is not None
                and r["final_grad_norm"] < args.gn_threshold]
        named = ""
        if args.hessian and conv:
            problem = get_problem(problem_spec)
            eigs = [min_hessian_eig(problem, store.load_params(r["id"])) for r in conv]
            named = f" ({sum(e > 0 for e in eigs)}/{sum(e <= 0 for e in eigs)})"
        print(f"| {problem_spec} | {method_label(method)} | {budget} | {_share(ok, n)} | "
              f"{_share(len(failed), n)} | {len(conv)}{named} | {len(failed) - len(conv)} | "
              f"{_share(div, n)} |")


if __name__ == "__main__":
    main()
