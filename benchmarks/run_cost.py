"""Cost of a run in gradient-equivalents against its wall time: gd and saddle-free Newton.

Exact command (from the repository root):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run_cost.py

which is the same as

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run_cost.py --methods gd,saddle-free-newton \
        --problems teacher-student:k=6,exact=false spirals teacher-student:k=8 --seeds 8 \
        --steps 1000 --threads 1

For each problem, each method (options tuned on the problem) trains the same seeds with
:func:`synaprune.bench.run_seeds` in this one process, one after the other; printed: wall time,
median steps and median ``cost`` (:mod:`synaprune.bench.cost`), and each method's ratios to the
first one's. The cost counts what the method computes; the wall time also holds what the
seed-batched runner does for it (a stopped seed is still computed until its batch ends).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from synaprune.bench import get_method, run_seeds
from synaprune.problems import get_problem


def main() -> None:
    """Run the comparison and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="gd,saddle-free-newton")
    parser.add_argument("--problems", nargs="+",
                        default=["teacher-student:k=6,exact=false", "spirals",
                                 "teacher-student:k=8"])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.seeds} seeds, at most {args.steps} steps, {args.threads} thread(s), "
          f"torch {torch.__version__}\n")
    print("| problem | method | successes | median steps | cost per step | median cost | "
          "wall time (s) | cost / first | wall / first |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for spec in args.problems:
        problem = get_problem(spec)
        first = None
        for name in args.methods.split(","):
            method = get_method(name, problem=problem.name)
            start = time.perf_counter()
            runs = run_seeds(problem, method, list(range(args.seeds)), args.steps,
                             classify=False)
            wall = time.perf_counter() - start
            cost = statistics.median(r.cost for r in runs)
            per_step = statistics.median(r.cost / r.steps for r in runs if r.steps)
            first = first or (cost, wall)
            print(f"| {spec} | {method.label} | {sum(r.success for r in runs)}/{args.seeds} | "
                  f"{statistics.median(r.steps for r in runs):g} | {per_step:.3g} | "
                  f"{cost:.4g} | {wall:.2f} | {cost / first[0]:.2f}x | "
                  f"{wall / first[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
