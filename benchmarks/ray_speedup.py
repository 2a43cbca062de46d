"""A sweep on 2 local Ray workers against the same sweep in one process; and an estimate of the
Safran & Shamir table up to k = 30 on a 64-core cluster, from measured per-k costs.

Exact command (from the repository root):

    .venv/bin/python benchmarks/ray_speedup.py

which is the same as

    .venv/bin/python benchmarks/ray_speedup.py --problem teacher-student:k=8 --method gd:lr=0.5 \
        --seeds 64 --steps 2000 --batch-seeds 16 --workers 2 \
        --ks 6,8,10,12,14,16,18,20,22,24,26,28,30 --cost-seeds 64 --cost-steps 100 \
        --table-seeds 500 --table-steps 4000 --cores 64

1. Speed-up: the sweep (``--seeds`` seeds in blocks of ``--batch-seeds``, one torch thread per
   process) is run by :func:`synaprune.bench.sweep.sweep` in this process, then by
   :func:`synaprune.bench._ray.sweep_ray` on a local Ray cluster of ``--workers`` CPUs started
   here (timed after a warm-up task has started the workers: cluster start-up is reported
   apart). Both write their own temporary store; the script checks that the two stores hold the
   same runs (final losses and parameters equal).
2. Estimate: for each k of ``--ks``, one block of ``--cost-seeds`` seeds of
   ``teacher-student:k=K`` (exact loss) with the method, ``--cost-steps`` steps, timed on one
   thread: the cost of a seed-step at that k. The table (``--table-seeds`` seeds of every k from
   6 to 30, ``--table-steps`` steps each, blocks of ``--cost-seeds`` seeds, every block run to the
   full budget, as a block is when one of its seeds stays unsolved) is then scheduled greedily,
   longest block first, on ``--cores`` workers of this machine's per-core speed; k between the
   measured ones is interpolated linearly. An estimate: it leaves out Ray's per-task overhead
   (milliseconds), start-up, and any difference between these cores and the cluster's.
"""

from __future__ import annotations

import argparse
import heapq
import os
import platform
import tempfile
import time

import torch

from synaprune.bench import get_method, run_seeds
from synaprune.bench.store import ResultStore
from synaprune.bench.sweep import sweep
from synaprune.problems import get_problem


def _same_runs(a: ResultStore, b: ResultStore) -> bool:
    ra, rb = a.rows(), b.rows()
    if [(r["method"], r["seed"]) for r in ra] != [(r["method"], r["seed"]) for r in rb]:
        return False
    for x, y in zip(ra, rb, strict=True):
        if x["final_loss"] != y["final_loss"] or x["curve"] != y["curve"]:
            return False
        px, py = a.load_params(x["id"]), b.load_params(y["id"])
        if any(not torch.equal(px[k], py[k]) for k in px):
            return False
    return True


def speedup(args: argparse.Namespace) -> dict[str, float]:
    import ray

    from synaprune.bench._ray import run_block, sweep_ray

    problem, method = get_problem(args.problem), get_method(args.method)
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        local = ResultStore(os.path.join(tmp, "local.db"))
        run_seeds(problem, method, [10**6, 10**6 + 1], 1)  # warm-up, as the workers get
        start = time.perf_counter()
        sweep(problem, method, seeds, args.steps, local, batch_seeds=args.batch_seeds)
        t_local = time.perf_counter() - start

        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray phones home by default; not here
        start = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
                 logging_level="warning", _node_ip_address="127.0.0.1")
        task = ray.remote(run_block)
        # Warm-up: one task per worker, so the timed sweep does not include importing torch.
        ray.get([task.remote(problem, method, [10**6 + i], 1) for i in range(args.workers)])
        t_start = time.perf_counter() - start
        remote = ResultStore(os.path.join(tmp, "ray.db"))
        start = time.perf_counter()
        sweep_ray([(problem, method)], seeds, args.steps, remote, batch_seeds=args.batch_seeds)
        t_ray = time.perf_counter() - start
        ray.shutdown()
        same = _same_runs(local, remote)
        local.close()
        remote.close()
    return dict(local=t_local, ray=t_ray, startup=t_start, same=float(same))


def per_k_costs(args: argparse.Namespace) -> dict[int, float]:
    """Seconds per seed-step at each measured k (one block of --cost-seeds seeds)."""
    method = get_method(args.method)
    costs = {}
    for k in args.ks:
        problem = get_problem(f"teacher-student:k={k}")
        run_seeds(problem, method, [0, 1], 2)  # warm-up
        start = time.perf_counter()
        results = run_seeds(problem, method, list(range(args.cost_seeds)), args.cost_steps)
        elapsed = time.perf_counter() - start
        # The block runs until its last seed stops: its cost is seeds x the longest run.
        costs[k] = elapsed / (args.cost_seeds * max(max(r.steps for r in results), 1))
    return costs


def estimate(args: argparse.Namespace, costs: dict[int, float]) -> tuple[float, float]:
    """(core-hours of the table, wall hours on --cores workers, longest block first)."""
    measured = sorted(costs)

    def cost(k: int) -> float:
        if k in costs:
            return costs[k]
        lo = max(m for m in measured if m < k)
        hi = min(m for m in measured if m > k)
        return costs[lo] + (costs[hi] - costs[lo]) * (k - lo) / (hi - lo)

    blocks = []
    for k in range(6, 31):
        full, rest = divmod(args.table_seeds, args.cost_seeds)
        sizes = [args.cost_seeds] * full + ([rest] if rest else [])
        blocks += [size * args.table_steps * cost(k) for size in sizes]
    workers = [0.0] * args.cores
    heapq.heapify(workers)
    for b in sorted(blocks, reverse=True):
        heapq.heappush(workers, heapq.heappop(workers) + b)
    return sum(blocks) / 3600, max(workers) / 3600


def main() -> None:
    """Run both parts and print Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="teacher-student:k=8")
    parser.add_argument("--method", default="gd:lr=0.5")
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-seeds", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ks", default="6,8,10,12,14,16,18,20,22,24,26,28,30")
    parser.add_argument("--cost-seeds", type=int, default=64)
    parser.add_argument("--cost-steps", type=int, default=100)
    parser.add_argument("--table-seeds", type=int, default=500)
    parser.add_argument("--table-steps", type=int, default=4000)
    parser.add_argument("--cores", type=int, default=64)
    parser.add_argument("--skip-speedup", action="store_true")
    args = parser.parse_args()
    args.ks = [int(k) for k in args.ks.split(",")]
    if args.ks[0] != 6 or args.ks[-1] != 30:
        parser.error("--ks must start at 6 and end at 30 (the table's range)")
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the start; torch {torch.__version__}")
    if not args.skip_speedup:
        s = speedup(args)
        print(f"\n{args.problem} {args.method}, {args.seeds} seeds x {args.steps} steps, blocks "
              f"of {args.batch_seeds}:\n")
        print("| run | wall time (s) |")
        print("| --- | --- |")
        print(f"| one process | {s['local']:.1f} |")
        print(f"| Ray, {args.workers} local workers | {s['ray']:.1f} |")
        print(f"\nspeed-up {s['local'] / s['ray']:.2f}x; Ray start-up and worker warm-up "
              f"{s['startup']:.1f} s (not in the Ray time); same runs: {bool(s['same'])}")
    costs = per_k_costs(args)
    print(f"\nper seed-step cost, blocks of {args.cost_seeds} seeds, {args.cost_steps} steps:\n")
    print("| k | us per seed-step |")
    print("| --- | --- |")
    for k, c in costs.items():
        print(f"| {k} | {c * 1e6:.1f} |")
    core_h, wall_h = estimate(args, costs)
    print(f"\nestimate, k = 6..30, {args.table_seeds} seeds x {args.table_steps} steps each: "
          f"{core_h:.2f} core-hours; on {args.cores} cores about {wall_h * 60:.0f} min "
          f"(longest block first)")


if __name__ == "__main__":
    main()
