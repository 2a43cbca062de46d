"""Cost of mechanism B's loss guard (``noise_guard``) against the same noise without it.

Exact command (from the repository root):

    .venv/bin/python benchmarks/noise_guard.py

which is the same as

    .venv/bin/python benchmarks/noise_guard.py --problem teacher-student:k=12 --seeds 64 \
        --steps 300 --repeats 3 --threads 1 --method "synaprune-b:lr=0.5,noise=0.2,\
noise_schedule=linear,noise_steps=300,noise_trigger=always"

Both sides run in this one process, alternately (``--repeats`` times each, the minimum
kept), with :func:`synaprune.bench.run_seeds` on the same seeds and a budget the noise covers
entirely (``noise_steps`` = ``--steps``), so every step kicks: the guard's worst case (two loss
evaluations a step). ``gd`` at the same rate is timed too, as the unit. Reports wall time per
seed-step and the ratios.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from synaprune.bench import get_method, run_seeds
from synaprune.problems import get_problem


def main() -> None:
    """Run the comparison and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="teacher-student:k=12")
    parser.add_argument("--method", default="synaprune-b:lr=0.5,noise=0.2,noise_schedule=linear,"
                        "noise_steps=300,noise_trigger=always")
    parser.add_argument("--guard", type=float, default=1.0, help="noise_guard r")
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problem = get_problem(args.problem)
    lr = get_method(args.method).lr
    methods = {"gd": get_method(f"gd:lr={lr}"),
               "noise": get_method(args.method),
               "noise + guard": get_method(args.method, noise_guard=args.guard)}
    seeds = list(range(100_000, 100_000 + args.seeds))
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(args.repeats):
        for name, method in methods.items():
            start = time.perf_counter()
            results = run_seeds(problem, method, seeds, args.steps)
            elapsed = time.perf_counter() - start
            seed_steps = sum(max(r.steps, 1) for r in results)
            best[name] = min(best[name], elapsed / seed_steps)
    print(f"{args.problem}, {args.seeds} seeds, {args.steps} steps, {args.threads} thread(s), "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print("| method | us per seed-step | x gd | x noise |")
    print("|---|---|---|---|")
    for name in methods:
        print(f"| {name} | {1e6 * best[name]:.1f} | {best[name] / best['gd']:.2f} | "
              f"{best[name] / best['noise']:.2f} |")


if __name__ == "__main__":
    main()
