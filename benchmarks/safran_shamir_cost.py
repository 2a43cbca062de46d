"""How the cost of the Safran & Shamir table grows with k: CPU time per step of one batch.

Exact command (from the repository root):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/safran_shamir_cost.py --k 6 8 10 12 14 16 18 20

For each k, ``run_seeds`` trains ``--seeds`` seeds of ``teacher-student:k=K`` with ``gd`` at
step 5/k for ``--steps`` steps, without classification, timed in process CPU time (the machine
is shared: wall time counts the other jobs): the time of one step of a batch of that many live
runs. The Hessian check of the classification is timed where the lab makes it: ``--check-seeds``
more seeds are trained until converged (at most ``--cap`` steps), and
:func:`synaprune.bench.kinds.classify_results` runs on them; it calls Lanczos only for the runs
whose gradient is small and that are not global (the spurious minima), so its time is divided
by their number. The exponent is the least-squares slope of log(time per step) on log(k).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from synaprune.bench import get_method, run_seeds
from synaprune.bench.kinds import classify_results
from synaprune.problems import get_problem


def main() -> None:
    """Print a Markdown table and the fitted exponent."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[6, 8, 10, 12, 14, 16, 18, 20])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--check-seeds", type=int, default=16)
    parser.add_argument("--cap", type=int, default=20_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.seeds} seeds, {args.steps} steps, "
          "CPU time")
    print()
    print("| k | ms per step of the batch | us per seed-step | runs checked (spurious) of "
          f"{args.check_seeds} | s per Hessian check |")
    print("|---:|---:|---:|---:|---:|")
    points = []
    for k in args.k:
        problem = get_problem(f"teacher-student:k={k}")
        method = get_method("gd", lr=5.0 / k)
        run_seeds(problem, method, range(2), 3)  # warm-up
        start = time.process_time()
        results = run_seeds(problem, method, range(args.seeds), args.steps, classify=False)
        elapsed = time.process_time() - start
        iterations = max(r.steps for r in results) + 1
        converged = run_seeds(problem, method, range(args.seeds, args.seeds + args.check_seeds),
                              args.cap, until_converged=True, classify=False)
        start = time.process_time()
        classify_results(problem, converged)  # Lanczos where the gradient is small, not global
        hessian = time.process_time() - start
        checked = sum(r.min_eig is not None for r in converged)
        per_step = elapsed / iterations
        points.append((math.log(k), math.log(per_step)))
        print(f"| {k} | {1e3 * per_step:.2f} | {1e6 * per_step / args.seeds:.1f} | {checked} | "
              + (f"{hessian / checked:.3f} |" if checked else "- |"))
    if len(points) > 1:
        mx = sum(x for x, _ in points) / len(points)
        my = sum(y for _, y in points) / len(points)
        slope = (sum((x - mx) * (y - my) for x, y in points)
                 / sum((x - mx) ** 2 for x, _ in points))
        print()
        print(f"time per step grows like k^{slope:.2f} over k = {args.k[0]}..{args.k[-1]}")


if __name__ == "__main__":
    main()
