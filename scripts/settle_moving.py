"""Where do the runs that were still moving at the budget end? (docs/results.md, hard regime)

A run "still moving" when its budget ran out has no verdict: it could be on its way to the
global minimum or to a spurious one. This continues every such run of a database from its
stored final parameters with plain full-batch gradient descent at the run's own step (its
method's ``lr``: the GD step for the GD-type methods of the hard-regime study; not a GD step
for Adam or saddle-free Newton, whose cells there have no such runs), all runs of a cell at
once in the lab's own runner (:func:`synaprune.bench.run_seeds` with ``until_converged``, from
the stored parameters instead of the initialisation), until each is solved, converged or at
``--cap`` further steps, and names it as the lab does (:mod:`synaprune.bench.kinds`: Lanczos on
the Hessian where the gradient is small). Nothing is written to the database.

    python scripts/settle_moving.py OUT/e16.db [--cap 30000] [--json OUT/settled.json]

Prints one Markdown row per (problem, method, budget) cell with moving runs: how many, and
how many of them end global, in a spurious minimum, at a saddle, or still moving after the cap.
``--json`` also merges these counts into a JSON file keyed ``problem|method|budget`` (written
atomically), which ``scripts/study_hard_regime.py --settled`` reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter, defaultdict
from pathlib import Path

import torch

from synaprune._io import atomic_output
from synaprune.bench import get_method, run_seeds
from synaprune.bench.store import ResultStore
from synaprune.problems import Problem, get_problem


def continued(problem: Problem, starts: dict[int, dict[str, torch.Tensor]]) -> Problem:
    """``problem`` whose model of seed s starts from ``starts[s]`` (a run's stored final
    parameters) instead of its initialisation: the lab's runner then continues the runs."""

    def make(generator: torch.Generator) -> torch.nn.Module:
        model = problem.build_model(0)  # the architecture and buffers
        model.load_state_dict(starts[generator.initial_seed()], strict=False)
        return model

    return dataclasses.replace(problem, _make_model=make)


def settle(problem_spec: str, lr: float, starts: dict[int, dict[str, torch.Tensor]],
           cap: int) -> Counter:
    """Continue the runs (seed -> final parameters) with gd at ``lr`` in the lab's runner,
    until converged or ``cap`` more steps; the kinds they end with."""
    problem = continued(get_problem(problem_spec), starts)
    runs = run_seeds(problem, get_method(f"gd:lr={lr}"), sorted(starts), cap,
                     until_converged=True)
    return Counter(r.kind for r in runs)


# Options shown in the table (the others are a method's defaults, or the problem's fixed ones).
_SHOWN = ("k", "n", "exact", "lr", "restarts", "noise", "noise_steps", "radius", "eta", "rho")


def short(spec: str) -> str:
    """``name:opt=value,...`` with only the options of :data:`_SHOWN`."""
    name, _, options = spec.partition(":")
    kept = [o for o in options.split(",") if o.split("=")[0] in _SHOWN]
    return name + (":" + ",".join(kept) if kept else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("--cap", type=int, default=30_000, help="further GD steps at most")
    parser.add_argument("--json", type=Path, help="merge the counts into this JSON file")
    parser.add_argument("--kinds", default="moving",
                        help="comma-separated kinds to continue (default moving; e.g. "
                             "moving,unstable for methods whose noise never ends, which the "
                             "lab names unstable when the noise makes the loss rise)")
    parser.add_argument("--methods", default="",
                        help="comma-separated method names to continue (default: every method)")
    args = parser.parse_args()
    methods_asked = set(filter(None, args.methods.split(",")))
    settled: dict[str, dict[str, int | str]] = {}
    kinds_asked = set(args.kinds.split(","))
    torch.set_num_threads(1)
    with ResultStore(args.db, readonly=True) as store:
        cells: dict[tuple, list[dict]] = defaultdict(list)
        for r in store.rows():
            if r["kind"] in kinds_asked and (not methods_asked
                                             or r["method_name"] in methods_asked):
                cells[(r["problem"], r["method"], r["budget"])].append(r)
        print(f"{args.db}: runs of kind {args.kinds} at their budget, continued with gd at the "
              f"run's step for at most {args.cap} more steps\n")
        print("| problem | method | budget | moving | then global | spurious | saddle "
              "| still moving | other |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for (problem, method, budget), runs in sorted(cells.items()):
            starts = {r["seed"]: store.load_params(r["id"]) for r in runs}
            kinds = settle(problem, float(runs[0]["method_options"]["lr"]), starts, args.cap)
            other = sum(v for k, v in kinds.items()
                        if k not in ("global", "spurious", "saddle", "moving"))
            settled[f"{problem}|{method}|{budget}"] = {"at_budget": len(runs), **kinds,
                                                       "continued": args.kinds}
            print(f"| {short(problem)} | {short(method)} | {budget} | {len(runs)} "
                  f"| {kinds['global']} | {kinds['spurious']} | {kinds['saddle']} "
                  f"| {kinds['moving']} | {other} |")

    if args.json is not None:
        merged = json.loads(args.json.read_text()) if args.json.exists() else {}
        # A cell with no moving run is recorded too (as none), so that "not settled" and
        # "nothing to settle" differ for the reader.
        with ResultStore(args.db, readonly=True) as store:
            for r in store.rows():
                if methods_asked and r["method_name"] not in methods_asked:
                    continue  # not looked at: neither settled nor "nothing to settle"
                key = f"{r['problem']}|{r['method']}|{r['budget']}"
                merged.setdefault(key, {"at_budget": 0})
        merged.update(settled)
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(merged, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
