"""Cost of naming how runs end: the Hessian check after training, against the training itself.

Exact command (from the repository root):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kinds_cost.py

which is the same as

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kinds_cost.py --problem teacher-student:k=8 \
        --method gd --seeds 64 --steps 20000 --threads 1

In one process: (1) one Hessian-vector product (reuse-graph, as
:func:`synaprune.bench.kinds.hessian_extremes` does it) against one gradient of one model,
timed side by side in alternating rounds (median ratio); (2) the seeds trained with
``until_converged`` by :func:`synaprune.bench.run_seeds` without classification; (3) the
classification of those results (:func:`synaprune.bench.kinds.classify_results`), which runs
Lanczos only for runs whose gradient is small and that are not global. Reported: time per run of
each, Hessian-vector products per classified run, and that check's cost in gradient-equivalents
(1 gradient with its graph + HVPs x the measured ratio) against the training's (the runs'
``cost``).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections import Counter

import torch

from synaprune.bench import get_method, run_seeds
from synaprune.bench.kinds import classify_results
from synaprune.problems import get_problem


def _hvp_ratio(problem, rounds: int) -> float:
    """Median over rounds of (one reuse-graph HVP) / (one gradient), one model, seed 0."""
    model = problem.build_model(0)
    base = copy.deepcopy(model).to("meta")
    buffers = dict(model.named_buffers())
    point = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    names = list(point)

    def loss():
        return problem.functional_loss(base, point, buffers)

    grads = torch.autograd.grad(loss(), [point[k] for k in names], create_graph=True)
    vecs = [torch.randn_like(g) for g in grads]
    ratios = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(20):
            torch.autograd.grad(loss(), [point[k] for k in names])
        t1 = time.perf_counter()
        for _ in range(20):
            torch.autograd.grad(grads, [point[k] for k in names], vecs, retain_graph=True)
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(ratios)


def main() -> None:
    """Run the measurement and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="teacher-student:k=8")
    parser.add_argument("--method", default="gd")
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20000, help="maximum steps per run")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of the HVP timing")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problem = get_problem(args.problem)
    method = get_method(args.method, problem=problem.name)
    ratio = _hvp_ratio(problem, args.rounds)

    start = time.perf_counter()
    results = run_seeds(problem, method, list(range(args.seeds)), args.steps,
                        until_converged=True, classify=False)
    train = time.perf_counter() - start
    start = time.perf_counter()
    hvps = classify_results(problem, results)
    check = time.perf_counter() - start
    checked = [r for r in results if r.min_eig is not None]
    kinds = Counter(r.kind for r in results)
    train_cost = sum(r.cost for r in results if r.cost is not None)
    check_cost = len(checked) + ratio * hvps
    print(f"problem {problem.spec}, method {method.spec}, {args.seeds} seeds, until converged "
          f"(max {args.steps} steps), {args.threads} thread(s), torch {torch.__version__}, "
          f"{platform.processor() or '?'}")
    print(f"kinds: {dict(kinds)}")
    print()
    print("| quantity | value |")
    print("|---|---:|")
    print(f"| one HVP / one gradient (median of {args.rounds} rounds) | {ratio:.2f}x |")
    print(f"| training, wall time per run | {train / args.seeds * 1e3:.1f} ms |")
    print(f"| training, mean steps per run | {statistics.fmean(r.steps for r in results):.0f} |")
    print(f"| runs given a Hessian check | {len(checked)} of {args.seeds} |")
    if checked:
        print(f"| HVPs per checked run (Lanczos) | {hvps / len(checked):.1f} |")
        print(f"| check, wall time per checked run | {check / len(checked) * 1e3:.1f} ms |")
    print(f"| check, wall time per run (all runs) | {check / args.seeds * 1e3:.2f} ms |")
    print(f"| check / training, wall time | {check / train:.4f} |")
    print(f"| check / training, gradient-equivalents | {check_cost / train_cost:.5f} |")


if __name__ == "__main__":
    main()
