"""Throughput of seed batching: S seeds vectorised in one run against a Python loop over seeds.

Exact command (from the repository root):

    .venv/bin/python benchmarks/seed_batching.py

which is the same as

    .venv/bin/python benchmarks/seed_batching.py --problem teacher-student:k=8 --method gd \
        --seeds 1000 --loop-seeds 50 --steps 200 --threads 1

Both sides run in this one process, one after the other, on the same protocol
(:func:`synaprune.bench.run_seeds` for the batch; :func:`synaprune.bench.run_single`, the
ordinary single-model loop with ``torch.optim.SGD``, for the loop). The loop is timed on the first
``--loop-seeds`` seeds (a rate per seed-step); the batched run trains all ``--seeds``. The
script also checks that both give the same final parameters for the looped seeds. Both sides
time training only (``classify=False``: the kinds of :mod:`synaprune.bench.kinds` are named
after training, measured by ``benchmarks/kinds_cost.py``). Results are
reported in seed-steps per second and as the ratio batched / loop (target: at least 20x).
With ``--rounds R`` the two are timed alternately R times and the medians are reported, with
every round's ratio (a shared machine's load changes between the two halves of one round).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from synaprune.bench import get_method, run_seeds, run_single
from synaprune.problems import get_problem


def main() -> None:
    """Run the comparison and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="teacher-student:k=8")
    parser.add_argument("--method", default="gd")
    parser.add_argument("--seeds", type=int, default=1000, help="seeds in the batched run")
    parser.add_argument("--loop-seeds", type=int, default=50, help="seeds timed in the loop")
    parser.add_argument("--steps", type=int, default=200, help="step budget per seed")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=1,
                        help="loop and batch timed alternately this many times; medians")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problem, method = get_problem(args.problem), get_method(args.method)

    run_seeds(problem, method, [0, 1], 5)  # warm-up of both paths
    run_single(problem, method, 0, 5)

    loop_rates, batch_rates = [], []
    for _ in range(args.rounds):  # alternated, so that both sides see the same load
        start = time.perf_counter()
        loop = [run_single(problem, method, s, args.steps, classify=False)
                for s in range(args.loop_seeds)]
        loop_rates.append(sum(r.steps for r in loop) / (time.perf_counter() - start))
        start = time.perf_counter()
        batched = run_seeds(problem, method, list(range(args.seeds)), args.steps,
                            classify=False)
        batch_rates.append(sum(r.steps for r in batched) / (time.perf_counter() - start))

    diff = max(
        (batched[r.seed].params[k] - r.params[k]).abs().max().item()
        for r in loop for k in r.params
    )
    ratios = sorted(b / lo for b, lo in zip(batch_rates, loop_rates, strict=True))
    loop_rate, batch_rate = statistics.median(loop_rates), statistics.median(batch_rates)
    print(f"problem {problem.spec}, method {method.spec}, {args.steps} steps per seed, "
          f"{args.threads} thread(s), torch {torch.__version__}, {platform.processor() or '?'}, "
          f"{args.rounds} round(s), medians")
    print()
    print("| variant | seeds | seed-steps/s |")
    print("|---|---:|---:|")
    print(f"| Python loop over seeds (timed on {args.loop_seeds}) | {args.seeds} | "
          f"{loop_rate:,.0f} |")
    print(f"| batched (stacked seeds, one optimizer) | {args.seeds} | {batch_rate:,.0f} |")
    print()
    print(f"speed-up: {statistics.median(ratios):.1f}x (rounds: "
          f"{', '.join(f'{r:.1f}x' for r in ratios)}); "
          f"max |batched - loop| over final parameters of the looped seeds: {diff:.1e}")


if __name__ == "__main__":
    main()
