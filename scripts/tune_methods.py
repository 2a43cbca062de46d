"""Tune every lab method's options per problem, on tuning seeds that no reported table uses.

    .venv/bin/python scripts/tune_methods.py --problem xor --problem gaussians
    .venv/bin/python scripts/tune_methods.py --report > docs/tuning-grids.md

Protocol (the same for every method, so that no method gets more tuning than another):

1. Tuning seeds 1000..1000+S-1 (S per problem below); docs/results.md reports seeds 0.. only.
2. Stage 1: each single method (no combination) over its learning-rate grid (one grid for the
   SGD-based methods, one for adam, one for saddle-free-newton), all other options at the
   method's own defaults; when the best rate is at an end of the grid, one more rate past it.
3. Stage 2: each single method with a knob of its own (perturbed-gd radius and threshold,
   gradient-noise eta, sam rho, synaprune-a blend, synaprune-b noise and stall threshold,
   synaprune-c beta, saddle-free-newton damping) over that knob's grid at the stage-1 rate.
4. Stage 3: each combination (synaprune-ab, -ac, -bc, synaprune) takes its mechanisms' stage-2
   knobs and gets its own learning-rate grid.
5. A cell's score: most successes; ties: lower median final loss (a diverged run counts as
   +inf); then fewer median steps to success; then the grid's order.

Every run goes into a results database (default out/tuning.db), so an interrupted tuning
resumes where it stopped. The chosen options are written to src/synaprune/bench/_tuned.py
(atomically) and every cell's score to out/tuning/<problem>.json, from which ``--report``
prints the markdown tables of docs/tuning.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synaprune._io import atomic_output
from synaprune.bench import ResultStore, get_method, sweep
from synaprune.bench.methods import Method
from synaprune.bench.runner import check_compatible
from synaprune.problems import Problem, get_problem

ROOT = Path(__file__).resolve().parent.parent
TUNED_MODULE = ROOT / "src" / "synaprune" / "bench" / "_tuned.py"
LOG_DIR = ROOT / "out" / "tuning"

SGD_LR = (0.03, 0.1, 0.3, 1.0, 3.0)
ADAM_LR = (0.001, 0.003, 0.01, 0.03, 0.1)
NEWTON_LR = (0.1, 0.3, 1.0)  # saddle-free Newton: 1 is the full (damped) Newton step
# Past either end of a grid, one more step of the same factor (about 3.16) is tried when the
# best value sits at that end.
LR_FACTOR = 10 ** 0.5


@dataclass(frozen=True)
class Protocol:
    spec: str  # the problem spec tuned on
    budget: int  # optimizer steps per run
    seeds: int  # tuning seeds SEED_START, SEED_START + 1, ...
    sgd_lr: tuple[float, ...] = SGD_LR  # learning rates of every SGD-based method
    adam_lr: tuple[float, ...] = ADAM_LR  # learning rates of adam
    newton_lr: tuple[float, ...] = NEWTON_LR  # learning rates of saddle-free-newton
    knobs: bool = True  # stage 2; False: the knobs keep the methods' own defaults
    grid_only: tuple[str, ...] = ()  # methods too slow here for the extension and stage 2


# The autoencoder costs ~4 ms per seed and step (1797 examples x 64 inputs, float64), about 40x
# the others, so it gets 8 seeds, 300 steps and 3-point lr grids (centred where gd, sgd, momentum
# and adam did best on the full grids); its tuning is the least certain.
PROBLEMS: dict[str, Protocol] = {
    "xor": Protocol("xor", 2000, 16),
    "gaussians": Protocol("gaussians", 2000, 16),
    "spirals": Protocol("spirals", 2000, 16),
    "teacher-student": Protocol("teacher-student:exact=false,k=6", 1000, 16),
    # saddle-free-newton takes ~10 minutes per autoencoder cell: two rates, nothing more.
    "autoencoder": Protocol("autoencoder", 300, 8, sgd_lr=(0.3, 1.0, 3.0),
                            adam_lr=(0.003, 0.01, 0.03), newton_lr=(0.1, 0.3),
                            grid_only=("saddle-free-newton",)),
}
SEED_START = 1000
SINGLES = ("gd", "sgd", "momentum", "adam", "perturbed-gd", "gradient-noise", "sam",
           "synaprune-a", "synaprune-b", "synaprune-c", "saddle-free-newton")
KNOBS: dict[str, list[dict[str, Any]]] = {
    "perturbed-gd": [{"radius": r, "threshold": g} for r in (0.1, 0.5, 2.0)
                     for g in (1e-3, 1e-2)],
    "gradient-noise": [{"eta": e} for e in (3e-4, 3e-3, 3e-2)],
    "sam": [{"rho": r} for r in (0.01, 0.05, 0.2)],
    "synaprune-a": [{"blend": b} for b in (0.25, 0.5, 1.0)],
    "synaprune-b": [{"noise": n, "stall_threshold": s} for n in (0.01, 0.1)
                    for s in (1e-4, 1e-3, 1e-2)],
    "synaprune-c": [{"beta": b} for b in (0.01, 0.1, 1.0)],
    "saddle-free-newton": [{"damping": d} for d in (0.001, 0.01, 0.1, 1.0)],
}
COMBINATIONS = {
    "synaprune-ab": ("synaprune-a", "synaprune-b"),
    "synaprune-ac": ("synaprune-a", "synaprune-c"),
    "synaprune-bc": ("synaprune-b", "synaprune-c"),
    "synaprune": ("synaprune-a", "synaprune-b", "synaprune-c"),
}


def lr_grid(protocol: Protocol, name: str) -> tuple[float, ...]:
    if name == "saddle-free-newton":
        return protocol.newton_lr
    return protocol.adam_lr if name == "adam" else protocol.sgd_lr


def score(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Successes, median final loss (diverged: inf) and median steps to success of a cell."""
    losses = [math.inf if r["status"] == "diverged" or r["final_loss"] is None
              else r["final_loss"] for r in rows]
    steps = [r["steps_to_success"] for r in rows if r["success"]]
    return {"runs": len(rows), "successes": sum(bool(r["success"]) for r in rows),
            "diverged": sum(r["status"] == "diverged" for r in rows),
            "median_final_loss": statistics.median(losses),
            "median_steps_to_success": statistics.median(steps) if steps else None}


def rank_key(cell: dict[str, Any]) -> tuple[float, float, float]:
    s = cell["score"]
    steps = s["median_steps_to_success"]
    return (-s["successes"], s["median_final_loss"], math.inf if steps is None else steps)


class Tuner:
    """Runs and scores cells of one problem, recording every cell."""

    def __init__(self, problem: Problem, budget: int, seeds: list[int], store: ResultStore,
                 verbose: bool) -> None:
        self.problem, self.budget, self.seeds, self.store = problem, budget, seeds, store
        self.verbose = verbose
        self.cells: list[dict[str, Any]] = []

    def compatible(self, name: str) -> bool:
        try:
            check_compatible(self.problem, get_method(name))
        except ValueError as exc:
            print(f"  {name}: refused ({exc})", file=sys.stderr)
            return False
        return True

    def run(self, stage: int, name: str, options: dict[str, Any]) -> dict[str, Any]:
        method: Method = get_method(name, **options)
        sweep(self.problem, method, self.seeds, self.budget, self.store)
        rows = [r for r in self.store.rows([self.problem.spec])
                if r["method"] == method.spec and r["budget"] == self.budget
                and r["seed"] in set(self.seeds)]
        cell = {"stage": stage, "method": name, "options": options, "spec": method.spec,
                "score": score(rows)}
        self.cells.append(cell)
        if self.verbose:
            s = cell["score"]
            print(f"  {name} {options}: {s['successes']}/{s['runs']} ok, median loss "
                  f"{s['median_final_loss']:.4g}", file=sys.stderr, flush=True)
        return cell

    def best(self, cells: list[dict[str, Any]]) -> dict[str, Any]:
        return min(cells, key=rank_key)  # min is stable: ties keep the grid's order

    def best_lr(self, stage: int, name: str, grid: tuple[float, ...],
                fixed: dict[str, Any], extend: bool = True) -> dict[str, Any]:
        """Best cell over the lr grid, extended by one step past an end that wins."""
        cells = [self.run(stage, name, {**fixed, "lr": lr}) for lr in grid]
        best = self.best(cells)
        lr = best["options"]["lr"]
        if extend and len(grid) > 1 and lr in (grid[0], grid[-1]):
            beyond = lr * LR_FACTOR if lr == grid[-1] else lr / LR_FACTOR
            cells.append(self.run(stage, name, {**fixed, "lr": float(f"{beyond:.3g}")}))
            best = self.best(cells)
        return best


def tune(name: str, store: ResultStore, verbose: bool) -> tuple[dict[str, dict[str, Any]],
                                                                 list[dict[str, Any]]]:
    protocol = PROBLEMS[name]
    problem, budget = get_problem(protocol.spec), protocol.budget
    seeds = list(range(SEED_START, SEED_START + protocol.seeds))
    tuner = Tuner(problem, budget, seeds, store, verbose)
    print(f"{problem.spec}: budget {budget}, seeds {seeds[0]}-{seeds[-1]}", file=sys.stderr)
    chosen: dict[str, dict[str, Any]] = {}
    for method in SINGLES:
        if not tuner.compatible(method):
            continue
        extend = method not in protocol.grid_only
        chosen[method] = dict(tuner.best_lr(1, method, lr_grid(protocol, method), {},
                                            extend)["options"])
    for method, grid in KNOBS.items():
        if method not in chosen or not protocol.knobs or method in protocol.grid_only:
            continue
        cells = [tuner.run(2, method, {**chosen[method], **knob}) for knob in grid]
        chosen[method] = dict(tuner.best(cells)["options"])
    for method, parts in COMBINATIONS.items():
        if not tuner.compatible(method):
            continue
        fields = set(get_method(method).options)
        knobs = {k: v for part in parts for k, v in chosen.get(part, {}).items()
                 if k != "lr" and k in fields}
        chosen[method] = dict(tuner.best_lr(3, method, lr_grid(protocol, method),
                                            knobs)["options"])
    return chosen, tuner.cells


def write_atomically(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:  # the umask's permissions, not mkstemp's 0600
        tmp.write_text(text)


def write_tuned() -> None:
    """Regenerate _tuned.py from every problem's log (so that two tuning processes working on
    different problems cannot drop each other's entries: the last one to finish writes both)."""
    tuned = {path.stem: json.loads(path.read_text())["chosen"]
             for path in sorted(LOG_DIR.glob("*.json")) if path.stem in PROBLEMS}
    header = TUNED_MODULE.read_text().split("TUNED:", 1)[0]
    lines = ["TUNED: dict[str, dict[str, dict[str, Any]]] = {"]
    for problem in sorted(tuned):
        lines.append(f"    {problem!r}: {{")
        for method in sorted(tuned[problem]):
            options = dict(sorted(tuned[problem][method].items()))
            line = f"        {method!r}: {options!r},"
            if len(line) <= 99:
                lines.append(line)
            else:  # one option per line
                lines.append(f"        {method!r}: {{")
                lines.extend(f"            {k!r}: {v!r}," for k, v in options.items())
                lines.append("        },")
        lines.append("    },")
    lines.append("}")
    write_atomically(TUNED_MODULE, header + "\n".join(lines) + "\n")


def report() -> str:
    """Markdown: per problem, every cell with its score, the chosen cell of each stage marked."""
    out = []
    for name, protocol in PROBLEMS.items():
        path = LOG_DIR / f"{name}.json"
        if not path.exists():
            continue
        log = json.loads(path.read_text())
        out.append(f"### {protocol.spec}: {protocol.seeds} tuning seeds ({SEED_START}-"
                   f"{SEED_START + protocol.seeds - 1}), {protocol.budget} steps\n")
        out.append("| stage | method | options tried | successes | diverged | median final loss "
                   "| median steps to success | chosen |")
        out.append("|---:|---|---|---:|---:|---:|---:|:---:|")
        for cell in log["cells"]:
            s = cell["score"]
            opts = ", ".join(f"{k}={v}" for k, v in cell["options"].items())
            mark = "**x**" if log["chosen"].get(cell["method"]) == cell["options"] else ""
            steps = s["median_steps_to_success"]
            out.append(f"| {cell['stage']} | {cell['method']} | {opts} | "
                       f"{s['successes']}/{s['runs']} | {s['diverged']} | "
                       f"{s['median_final_loss']:.4g} | {'-' if steps is None else f'{steps:g}'} | "
                       f"{mark} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", action="append", choices=sorted(PROBLEMS),
                        help="problem to tune (repeatable); default: all")
    parser.add_argument("--db", default=str(ROOT / "out" / "tuning.db"))
    parser.add_argument("--report", action="store_true", help="print the markdown tables")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.report:
        print(report())
        return 0
    torch.set_num_threads(1)
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    with ResultStore(args.db) as store:
        for name in args.problem or list(PROBLEMS):
            chosen, cells = tune(name, store, verbose=not args.quiet)
            write_atomically(LOG_DIR / f"{name}.json",
                             json.dumps({"chosen": chosen, "cells": cells}, indent=1))
            write_tuned()
            print(f"{name}: {chosen}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
