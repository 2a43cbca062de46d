"""The ``bench`` and ``results`` subcommands, registered into the main ``synaprune`` parser.

    synaprune bench --problem teacher-student:k=8 --method gd,adam --seeds 500 --db results.db
    synaprune results --db results.db --problem teacher-student --format text

Bad input (unknown problem, method or option names, malformed options, an unreadable database)
raises :class:`synaprune.errors.UsageError`, which the main command prints as one line (exit 2).
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import sys
from pathlib import Path
from typing import Any

import torch

from synaprune._spec import normalize_name
from synaprune.bench._runs import format_runs, method_matcher
from synaprune.bench.methods import Method, parse_method_list
from synaprune.bench.runner import check_compatible
from synaprune.bench.store import ResultStore
from synaprune.bench.summary import FORMATS, check_format, format_summaries, summarize
from synaprune.bench.sweep import stop_rule, sweep
from synaprune.errors import UsageError
from synaprune.problems import Problem, get_problem, list_problems

__all__ = ["add_bench_parser", "add_results_parser", "cmd_bench", "cmd_results",
           "problem_filters"]


def _problems(specs: list[str]) -> list[Problem]:
    problems = []
    for spec in specs:
        try:
            problems.append(get_problem(spec))
        except (ValueError, KeyError) as exc:
            raise UsageError(str(exc).strip("'\"")) from None
    return problems


def problem_filters(specs: list[str]) -> list[str]:
    """``--problem`` filters of the commands that read a database, as
    :meth:`ResultStore.rows` takes them: a full spec canonicalised, a bare name normalised.

    Raises:
        UsageError: For an unknown problem name or a bad spec.
    """
    filters: list[str] = []
    for spec in specs:
        if ":" in spec:
            filters.append(_problems([spec])[0].spec)
        elif normalize_name(spec) in list_problems():
            filters.append(normalize_name(spec))
        else:
            raise UsageError(f"Unknown problem '{spec}'; choose from: "
                             f"{', '.join(list_problems())}")
    return filters


def _open_store(path: str, readonly: bool) -> ResultStore:
    folder = Path(path).parent
    if not readonly and not folder.is_dir():
        raise UsageError(f"cannot write database '{path}': the folder '{folder}' does not exist; "
                         "create it (mkdir -p) or choose another --db")
    try:
        return ResultStore(path, readonly=readonly)
    except FileNotFoundError:
        raise UsageError(f"cannot read database '{path}': no such file") from None
    except (sqlite3.Error, OSError) as exc:
        if readonly:
            raise UsageError(f"cannot read database '{path}': {exc}") from None
        raise UsageError(f"cannot write database '{path}': {exc} (bench writes the file and "
                         f"creates {Path(path).name}-wal and -shm beside it: check the "
                         f"permissions of the file and its folder, or choose another --db)"
                         ) from None


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``synaprune bench``: train the missing seeds and print a summary.

    Args:
        args: Parsed arguments of :func:`add_bench_parser`.

    Returns:
        Exit status 0.

    Raises:
        UsageError: For bad problem or method names or options, bad counts, or a database
            that cannot be opened.
    """
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    if args.steps < 0:
        raise UsageError(f"--steps must be >= 0, got {args.steps}")
    if args.batch_seeds < 1:
        raise UsageError(f"--batch-seeds must be >= 1, got {args.batch_seeds}")
    if args.grad_tol is not None and not (args.grad_tol > 0 and math.isfinite(args.grad_tol)):
        raise UsageError(f"--grad-tol must be a positive number, got {args.grad_tol}")
    if getattr(args, "ray", None) and (args.until_converged or args.grad_tol is not None):
        # the Ray tasks run the default rule; never ignore a rule the user asked for
        raise UsageError("--until-converged and --grad-tol are not available with --ray yet; "
                         "run without --ray")
    problems = _problems(args.problem)
    # Options not given on the command line take the values tuned on each problem
    # (docs/tuning.md), unless --defaults plain asks for the methods' own defaults.
    methods: dict[str, list[Method]] = {}
    try:
        for problem in problems:
            methods[problem.spec] = parse_method_list(
                ",".join(args.method), problem=problem.name if args.defaults == "tuned" else None)
            for method in methods[problem.spec]:
                check_compatible(problem, method)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _bench(args, problems, methods, seeds)
    finally:
        torch.set_num_threads(threads)


def _bench(args: argparse.Namespace, problems: list[Problem], methods: dict[str, list[Method]],
           seeds: list[int]) -> int:
    store = _open_store(args.db, readonly=False)
    try:
        # Before any training: a cell already stored under another stopping rule is refused
        # (sweep checks again), so that nothing runs for an hour to stop at the second cell.
        rule = stop_rule(args.until_converged, args.grad_tol)
        for problem in problems:
            for method in methods[problem.spec]:
                other = store.stop_rules(problem, method, args.steps) - {rule}
                if other:
                    raise UsageError(
                        f"{args.db} already holds runs of {problem.spec} x {method.label} "
                        f"with {args.steps} steps made with stopping rule "
                        f"{sorted(str(r) for r in other)[0].replace('None', 'the default')}, "
                        f"not {rule or 'the default'}; use another --db or the same rule")
        total = sum(len(m) for m in methods.values()) * len(seeds)
        bar: Any = None
        if not args.quiet:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True)
        if getattr(args, "ray", None):
            _bench_ray(args, problems, methods, seeds, store, bar)
        else:
            for problem in problems:
                for method in methods[problem.spec]:
                    done = len(store.done_seeds(problem, method, args.steps) & set(seeds))
                    if bar is not None:
                        bar.set_description(f"{problem.name} {method.name}")
                        bar.update(done)

                    def on_step(t: int, active: int) -> None:
                        if bar is not None and t % 50 == 0:
                            bar.set_postfix_str(f"step {t}/{args.steps}, {active} active")

                    try:
                        sweep(problem, method, seeds, args.steps, store,
                              batch_seeds=args.batch_seeds, on_step=on_step,
                              on_batch=bar.update if bar is not None else None,
                              until_converged=args.until_converged, grad_tol=args.grad_tol)
                    except ValueError as exc:  # a cell stored with another stopping rule
                        raise UsageError(str(exc)) from None
                    except sqlite3.Error as exc:  # e.g. the disk filled up after the open
                        raise UsageError(f"cannot write database '{args.db}': {exc}; the "
                                         "batches written before are kept, and a rerun "
                                         "resumes") from None
        if bar is not None:
            bar.close()
        rows = [r for r in store.rows([p.spec for p in problems])
                if r["method"] in {m.spec for m in methods[r["problem"]]}
                and r["budget"] == args.steps
                and args.seed_start <= r["seed"] < args.seed_start + args.seeds]
        print(format_summaries(summarize(rows), "text"))
    finally:
        store.close()
    return 0


def _bench_ray(args: argparse.Namespace, problems: list[Problem],
               methods: dict[str, list[Method]], seeds: list[int], store: ResultStore,
               bar: Any) -> None:
    """``bench --ray``: every block of every (problem, method) as a Ray task; this process
    writes the store as blocks arrive, and the bar counts finished runs."""
    from synaprune.bench._ray import connect, sweep_ray

    connect(args.ray)
    jobs = [(p, m) for p in problems for m in methods[p.spec]]
    if bar is not None:
        bar.set_description(f"ray {args.ray}")
        bar.update(sum(len(store.done_seeds(p, m, args.steps) & set(seeds)) for p, m in jobs))
    try:
        sweep_ray(jobs, seeds, args.steps, store, batch_seeds=args.batch_seeds,
                  threads=args.threads, on_batch=bar.update if bar is not None else None)
    except sqlite3.Error as exc:
        raise UsageError(f"cannot write database '{args.db}': {exc}; the blocks written "
                         f"before are kept, and a rerun resumes") from None
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None


def cmd_results(args: argparse.Namespace) -> int:
    """Run ``synaprune results``: summarise a results database, or list its runs (``--runs``).

    Args:
        args: Parsed arguments of :func:`add_results_parser`.

    Returns:
        Exit status 0.

    Raises:
        UsageError: For an unreadable database, an unknown problem or method or a bad format.
    """
    try:
        fmt = check_format(args.format)
    except ValueError:
        raise UsageError(f"unknown format '{args.format}'; choose from: "
                         f"{', '.join(FORMATS)}") from None
    filters = problem_filters(args.problem or [])
    try:
        match = method_matcher(args.method or [])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    store = _open_store(args.db, readonly=True)
    try:
        rows = [r for r in store.rows(filters or None) if match(r)]
    except sqlite3.Error as exc:
        raise UsageError(f"cannot read database '{args.db}': {exc}") from None
    finally:
        store.close()
    if args.runs:
        print(format_runs(rows, fmt), end="")
        return 0
    if args.at_cost is not None and not (args.at_cost > 0 and math.isfinite(args.at_cost)):
        raise UsageError(f"--at-cost must be a positive number, got {args.at_cost}")
    summaries = summarize(rows, at_cost=args.at_cost)
    if args.at_cost is not None and rows and not summaries:
        raise UsageError("--at-cost: none of the matching runs recorded its cost (a database "
                         "written before costs were stored); rerun them with synaprune bench")
    text = format_summaries(summaries, fmt)
    print(text, end="" if text.endswith("\n") else "\n")
    if args.plot:
        if not summaries:
            raise UsageError("--plot: no runs match, nothing to draw")
        from synaprune.report import plot_success_rates

        try:
            path = plot_success_rates(summaries, args.plot, title=f"success rates: {args.db}")
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot write plot '{args.plot}': {exc}") from None
        print(f"figure: {path}", file=sys.stderr)
    return 0


class _ListMethods(argparse.Action):
    """``bench --list``: print the methods and their options, then exit (like ``--version``,
    so that the required ``--problem`` and ``--method`` are not needed)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from synaprune.bench.methods import describe_methods

        print(describe_methods())
        parser.exit(0)


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on the main parser's subparsers.

    Args:
        subparsers: The object returned by ``parser.add_subparsers()``.

    Returns:
        The new subparser (its ``func`` default is :func:`cmd_bench`).
    """
    p = subparsers.add_parser(
        "bench", help="train many seeds of problems x methods into a results database",
        description="Train seeds 0..N-1 of each problem x method, vectorised over seeds, "
                    "and store one row per run; finished runs are skipped on reruns.")
    p.add_argument("--problem", action="append", required=True,
                   help="problem spec, e.g. teacher-student:k=8 (repeat for several); "
                        f"problems: {', '.join(list_problems())}")
    p.add_argument("--method", action="append", required=True,
                   help="comma-separated method specs, e.g. gd,adam:lr=0.01")
    p.add_argument("--seeds", type=int, default=100, help="number of seeds (default 100)")
    p.add_argument("--seed-start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--steps", type=int, default=1000, help="step budget per run (default 1000)")
    p.add_argument("--batch-seeds", type=int, default=256,
                   help="seeds trained together per batch (default 256)")
    p.add_argument("--db", default="results.db", help="SQLite results file (default results.db)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads while training (default 1: the tensors of one "
                        "step are small, and more threads were several times slower in "
                        "docs/benchmarks-seed-batching.md)")
    p.add_argument("--defaults", choices=("tuned", "plain"), default="tuned",
                   help="options not given in a method spec: 'tuned' (default) takes the values "
                        "tuned on each problem (docs/tuning.md), 'plain' the method's own")
    p.add_argument("--until-converged", action="store_true",
                   help="also stop a run once its full-batch gradient norm is small (see "
                        "--grad-tol), classify it and stop updating it; --steps is then the "
                        "maximum")
    p.add_argument("--grad-tol", type=float, default=None, metavar="TOL",
                   help="absolute gradient-norm tolerance of --until-converged and of the "
                        "classification of runs (default: relative, ||g|| max(||theta||,1) / "
                        "max(L - L*, tol) <= 1e-6; docs/definitions.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--ray", metavar="auto|ADDRESS",
                   help="run the blocks of seeds as Ray tasks (pip install 'synaprune[ray]'): "
                        "'auto' joins the cluster running here (or starts one with this "
                        "machine's CPUs), ADDRESS a cluster's head (HOST:PORT or "
                        "ray://HOST:10001); this process alone writes --db, block by block; "
                        "--threads is then each task's threads and CPUs")
    p.add_argument("--list", action=_ListMethods,
                   help="print every method with its options and defaults, and exit")
    p.set_defaults(func=cmd_bench)
    return p


def add_results_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``results`` on the main parser's subparsers.

    Args:
        subparsers: The object returned by ``parser.add_subparsers()``.

    Returns:
        The new subparser (its ``func`` default is :func:`cmd_results`).
    """
    p = subparsers.add_parser(
        "results", help="summarise a results database, or list its runs",
        description="Per problem: method, runs, success rate with a 95% Wilson interval, "
                    "median final loss, median steps to success, median cost, time per run, "
                    "failures by kind (spurious minimum, saddle, still moving, unstable, "
                    "diverged; 'not recorded' for runs stored before kinds were). With --runs: "
                    "one line per run (id, problem, method, seed, status, final loss, final "
                    "gradient norm); diagnose one with synaprune diagnose --db DB --run ID.")
    p.add_argument("--db", default="results.db", help="SQLite results file (default results.db)")
    p.add_argument("--problem", action="append",
                   help="keep only this problem: a name or a full spec (repeatable)")
    p.add_argument("--method", action="append",
                   help="keep only this method: a name, or a spec such as adam:lr=0.01 that "
                        "matches the runs with those option values (repeatable)")
    p.add_argument("--runs", action="store_true",
                   help="list the runs, with their ids, instead of summarising them")
    p.add_argument("--format", default="text",
                   help=f"one of {', '.join(FORMATS)} (default text: methods by name and the "
                        "options other than their defaults; csv and json give the full specs; "
                        "'table' is read as text)")
    p.add_argument("--at-cost", type=float, default=None, metavar="C",
                   help="count successes at cumulative cost C in gradient-equivalents (one "
                        "full-batch gradient = 1): a run succeeds at C if it succeeded within "
                        "that cost; runs still going at C are 'unfinished'")
    p.add_argument("--plot", metavar="FILE",
                   help="also draw the success rates with their intervals into FILE (.png, .svg)")
    p.set_defaults(func=cmd_results)
    return p
