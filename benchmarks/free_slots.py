"""What freeing the slots of stopped runs saves on an until-converged sweep.

Exact command (from the repository root), with a checkout of the runner before the change
(commit aa7430a froze a stopped seed in place and kept computing it until its batch ended):

    git worktree add /tmp/frozen aa7430a
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/free_slots.py --baseline-src /tmp/frozen/src

which is the same as

    ... benchmarks/free_slots.py --baseline-src /tmp/frozen/src \\
        --problem teacher-student:k=12 --method gd:lr=0.4167 --seeds 256 --steps 3000 --rounds 3

Each side trains the same seeds with :func:`synaprune.bench.run_seeds` (``until_converged``, no
classification) in a child process that imports the runner from its own source tree; the two
sides alternate ``--rounds`` times, so that both see the same load, and the medians are
compared. Reported: wall time, the seed-steps the runs took (the same on both sides: their
results agree), and the seed-steps a frozen batch computes (every seed until the slowest
stops).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys, time, torch
torch.set_num_threads(1)
from synaprune.bench import get_method, run_seeds
from synaprune.problems import get_problem
problem, method = get_problem(sys.argv[1]), get_method(sys.argv[2])
seeds, steps = list(range(int(sys.argv[3]))), int(sys.argv[4])
start = time.perf_counter()
runs = run_seeds(problem, method, seeds, steps, until_converged=True, classify=False)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "steps": [r.steps for r in runs], "status": [r.status for r in runs]}))
"""


def run_side(src: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, args.problem, args.method,
                          str(args.seeds), str(args.steps)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, required=True,
                        help="the src folder of a checkout with the frozen-slot runner")
    parser.add_argument("--problem", default="teacher-student:k=12")
    parser.add_argument("--method", default="gd:lr=0.4167")
    parser.add_argument("--seeds", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1] / "src"
    times: dict[str, list[float]] = {"freed": [], "frozen": []}
    for _ in range(args.rounds):  # alternated: both sides see the same load
        freed, frozen = run_side(here, args), run_side(args.baseline_src, args)
        times["freed"].append(freed["seconds"])
        times["frozen"].append(frozen["seconds"])
    same = freed["steps"] == frozen["steps"] and freed["status"] == frozen["status"]
    taken = sum(freed["steps"])
    computed = len(freed["steps"]) * max(freed["steps"])
    t_freed, t_frozen = statistics.median(times["freed"]), statistics.median(times["frozen"])
    print(f"{args.problem}, {args.method}, {args.seeds} seeds, at most {args.steps} steps, "
          f"until converged, 1 thread, {args.rounds} alternated round(s), medians")
    print()
    print("| runner | wall time (s) | seed-steps computed |")
    print("|---|---:|---:|")
    print(f"| frozen slots (baseline) | {t_frozen:.1f} | {computed:,} |")
    print(f"| freed slots | {t_freed:.1f} | {taken:,} |")
    print()
    print(f"speed-up {t_frozen / t_freed:.2f}x; the runs took {taken:,} seed-steps, "
          f"{taken / computed:.0%} of what the frozen batch computes; "
          f"same steps and statuses on both sides: {same}")


if __name__ == "__main__":
    main()
