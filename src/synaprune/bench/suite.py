"""The main job, ``make demo``: a quick suite of the lab, one diagnosis, the report.

    synaprune demo                       # out/demo/results.db, out/demo/report/index.html
    synaprune demo --db my.db --out my-report

:data:`QUICK_SUITE` lists the problems, each with its seeds and step budget; every registered
method (:func:`synaprune.bench.list_methods`, so methods added later join by themselves) runs
on every problem it can train, with the options tuned on that problem (docs/tuning.md), except
where an entry leaves one out for its cost (said when the suite runs). The suite is resumable:
``synaprune bench`` skips the runs the database already holds, so a second ``make demo`` trains
nothing and only rebuilds the diagnosis and the report (byte-equal: same database, same page).

After the runs: the diagnosis of one stuck run (``synaprune diagnose --db --run``; of the
first problem with data, the method with the most stuck runs, its lowest seed), then
``synaprune report`` (with ``out/experiments`` when that folder exists), and the report's path
printed last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synaprune.bench.methods import get_method, list_methods
from synaprune.bench.runner import check_compatible
from synaprune.problems import get_problem

__all__ = ["QUICK_SUITE", "SuiteEntry", "run_suite", "suite_methods"]


@dataclass(frozen=True)
class SuiteEntry:
    """One problem of a suite.

    Attributes:
        problem: Problem spec.
        seeds: Seeds 0..seeds-1 (cheap: the runner trains them at once).
        steps: Step budget per run (what costs time).
        methods: Method names to run; None: every registered method the problem can train.
        skip: ``{method name: why}`` of methods left out here.
    """

    problem: str
    seeds: int
    steps: int
    methods: tuple[str, ...] | None = None
    skip: tuple[tuple[str, str], ...] = ()


QUICK_SUITE: tuple[SuiteEntry, ...] = (
    # Small and fast; plain GD with its tuned step gets stuck on a few seeds, and every
    # per-example mechanism (A, C) can run here.
    SuiteEntry("xor", seeds=32, steps=1000),
    # The hard regime: exact population loss, k = 10, where GD ends at a spurious minimum in
    # about a third of runs (docs/results.md: 34.4 % of 500 seeds with gd:lr=0.5).
    SuiteEntry("teacher-student:k=10", seeds=64, steps=1000, skip=(
        ("saddle-free-newton", "20 Hessian-vector products a step; run it at full size"),)),
    # Minibatch SGD needs more examples than xor's 4 (batch 32): 200 points, against gd.
    SuiteEntry("gaussians", seeds=32, steps=500, methods=("gd", "sgd")),
)


def suite_methods(entry: SuiteEntry) -> tuple[list[str], list[str]]:
    """The method names an entry runs, and one line per method left out (and why).

    Returns:
        ``(names, left out)``.
    """
    problem = get_problem(entry.problem)
    skip = dict(entry.skip)
    names, left_out = [], []
    for name in entry.methods or list_methods():
        if name in skip:
            left_out.append(f"{name}: {skip[name]}")
            continue
        try:
            check_compatible(problem, get_method(name, problem=problem.name))
        except ValueError as exc:
            if entry.methods is not None:  # asked for by name: a real error
                raise
            left_out.append(f"{name}: {exc}")
            continue
        names.append(name)
    return names, left_out


def _parallel(commands: list[tuple[list[str], list[str]]], jobs: int) -> int:
    """Run ``synaprune bench`` commands ``jobs`` at a time, each in its own process; print
    each one's output in the suite's order once it has finished; after a failure start no
    more. Returns the first non-zero exit status, or 0."""
    import subprocess
    import sys
    import tempfile
    import time

    pending = list(range(len(commands)))
    running: dict[int, tuple[subprocess.Popen, Any, float]] = {}
    done: dict[int, tuple[str, float]] = {}
    shown = status = 0
    print(f"\n== training {len(commands)} problems, {jobs} at a time (one process each; "
          "each problem's table follows when it is done)", flush=True)
    try:
        while pending or running:
            while pending and len(running) < jobs and not status:
                i = pending.pop(0)
                # a file, not a pipe: it never fills up; closed when the process is done
                log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
                proc = subprocess.Popen([sys.executable, "-m", "synaprune", *commands[i][1],
                                         "--quiet"], stdout=log, stderr=subprocess.STDOUT,
                                        text=True)
                running[i] = (proc, log, time.perf_counter())
            if not running:
                break
            for i, (proc, log, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.seek(0)
                done[i] = (log.read(), time.perf_counter() - start)
                log.close()
                del running[i]
                status = status or proc.returncode
            while shown in done:
                out, seconds = done[shown]
                head = commands[shown][0]
                print("\n" + "\n".join([f"{head[0]} ({seconds:.0f} s)", *head[1:]]))
                print(out, end="", flush=True)
                shown += 1
            time.sleep(0.2)
    finally:
        for proc, log, _ in running.values():  # interrupted: stop what this started
            proc.terminate()
            proc.wait()
            log.close()
    return status


def run_suite(db: str | Path = "out/demo/results.db", out: str | Path = "out/demo/report",
              *, suite: tuple[SuiteEntry, ...] = QUICK_SUITE, quiet: bool = False,
              experiments: str | Path | None = "out/experiments", jobs: int = 2) -> int:
    """Run the suite into ``db``, diagnose one stuck run, write the report into ``out``.

    Args:
        db: Results database (created, or resumed).
        out: Report folder (replaced when the new report is complete).
        suite: The problems, seeds and budgets.
        quiet: No progress bars.
        experiments: Experiments folder to include in the report when it exists.
        jobs: Problems trained at once, each in its own process on one thread (2: both cores
            of the project's machines; the database takes one writer at a time, a batch per
            transaction). Their outputs are printed in the suite's order as each finishes.

    Returns:
        Exit status: 0, or the first failing command's (2 for bad input).
    """
    from synaprune.cli import main
    from synaprune.report._data import load_runs
    from synaprune.report._stats import stuck_runs

    Path(db).parent.mkdir(parents=True, exist_ok=True)
    extra = ["--quiet"] if quiet else []
    commands = []
    for entry in suite:
        names, left_out = suite_methods(entry)
        head = [f"== {entry.problem}: {len(names)} methods x {entry.seeds} seeds, "
                f"{entry.steps} steps", *(f"   left out: {line}" for line in left_out)]
        commands.append((head, ["bench", "--problem", entry.problem, "--method",
                                ",".join(names), "--seeds", str(entry.seeds), "--steps",
                                str(entry.steps), "--db", str(db), "--threads", "1"]))
    if jobs <= 1:
        for head, args in commands:
            print("\n" + "\n".join(head), flush=True)
            status = main([*args, *extra])
            if status:
                return status
    else:
        status = _parallel(commands, jobs)
        if status:
            return status
    table = load_runs(db)
    for entry in suite:
        problem = get_problem(entry.problem)
        if not problem.per_example:
            continue
        picks = stuck_runs([r for r in table.rows if r["problem"] == problem.spec], 1)
        if picks:
            print(f"\n== diagnosis of a stuck run: synaprune diagnose --db {db} --run "
                  f"{picks[0]['id']}", flush=True)
            status = main(["diagnose", "--db", str(db), "--run", str(picks[0]["id"]),
                           "--k", "2", "--quiet"])
            if status:
                return status
            break
    else:
        print("\n== no stuck run to diagnose")
    args = ["report", "--db", str(db), "--out", str(out), *extra]
    if experiments is not None and Path(experiments).is_dir():
        args += ["--experiments", str(experiments)]
    print(f"\n== {' '.join(['synaprune', *args])}", flush=True)
    return main(args)
