"""Throughput of seed batching: S seeds vectorised in one run against a Python loop over seeds.

Exact command (from the repository root):

    .venv/bin/python benchmarks/seed_batching.py

which is the same as

    .venv/bin/python benchmarks/seed_batching.py --problem teacher-student:k=8 --method gd \
        --seeds 1000 --loop-seeds 50 --steps 200 --threads 1

Both sides run in this one process, one after the other, on the same protocol
(:func:`synaprune.bench.run_seeds` for the batch; :func:`synaprune.bench.run_single`, the
ordinary single-model loop with ``torch.optim.SGD``, for the loop). The loop is timed on the first
``--loop-seeds`` seeds and scaled to ``--seeds``; the batched run trains all ``--seeds``. The
script also checks that both give the same final parameters for the looped seeds. Both sides
time training only (``classify=False``: the kinds of :mod:`synaprune.bench.kinds` are named
after training, measured by ``benchmarks/kinds_cost.py``). Results are
reported in seed-steps per second and as the ratio batched / loop (target: at least 20x).
"""

from __future__ import annotations

import argparse
import platform
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problem, method = get_problem(args.problem), get_method(args.method)

    run_seeds(problem, method, [0, 1], 5)  # warm-up of both paths
    run_single(problem, method, 0, 5)

    start = time.perf_counter()
    loop = [run_single(problem, method, s, args.steps, classify=False)
            for s in range(args.loop_seeds)]
    loop_time = time.perf_counter() - start
    loop_steps = sum(r.steps for r in loop)

    start = time.perf_counter()
    batched = run_seeds(problem, method, list(range(args.seeds)), args.steps, classify=False)
    batch_time = time.perf_counter() - start
    batch_steps = sum(r.steps for r in batched)

    diff = max(
        (batched[r.seed].params[k] - r.params[k]).abs().max().item()
        for r in loop for k in r.params
    )
    loop_rate = loop_steps / loop_time
    batch_rate = batch_steps / batch_time
    scaled = loop_time * args.seeds / args.loop_seeds
    print(f"problem {problem.spec}, method {method.spec}, {args.steps} steps per seed, "
          f"{args.threads} thread(s), torch {torch.__version__}, {platform.processor() or '?'}")
    print()
    print("| variant | seeds | wall time (s) | seed-steps/s |")
    print("|---|---:|---:|---:|")
    print(f"| Python loop over seeds (timed on {args.loop_seeds}, scaled) | {args.seeds} | "
          f"{scaled:.2f} | {loop_rate:,.0f} |")
    print(f"| batched (vmap over seeds, one optimizer) | {args.seeds} | {batch_time:.2f} | "
          f"{batch_rate:,.0f} |")
    print()
    print(f"speed-up: {batch_rate / loop_rate:.1f}x; "
          f"max |batched - loop| over final parameters of the looped seeds: {diff:.1e}")


if __name__ == "__main__":
    main()
