"""The ``experiment`` subcommand.

    synaprune experiment --list
    synaprune experiment random-neurons --quick
    synaprune experiment depth --out out/experiments
"""

from __future__ import annotations

import argparse
from typing import Any

from synaprune.errors import UsageError

__all__ = ["add_experiment_parser", "cmd_experiment"]


def _usage_error(message: str) -> Exception:
    return UsageError(message)


def cmd_experiment(args: argparse.Namespace) -> int:
    """Run ``synaprune experiment``: list, or run/resume one experiment and print its verdict."""
    from synaprune.experiments import EXPERIMENTS, run_experiment

    if args.list:
        for name in sorted(EXPERIMENTS):
            module = EXPERIMENTS[name]
            print(f"{name} (seed {module.SEED}): {module.CLAIM}")
        return 0
    if args.name is None:
        raise _usage_error("name an experiment (synaprune experiment --list shows them)")
    if args.name not in EXPERIMENTS:
        raise _usage_error(f"unknown experiment '{args.name}'; choose from: "
                           f"{', '.join(sorted(EXPERIMENTS))}")
    try:
        result = run_experiment(args.name, args.out, quick=args.quick,
                                progress=False if args.no_progress else None)
    except ValueError as exc:  # a bad --out or an unreadable store; cells are validated apart
        raise _usage_error(str(exc)) from None
    summary: dict[str, Any] = result.summary
    held = {True: "held", False: "did not hold", None: "not decidable at this scale"}
    print(f"{result.name}{' (quick)' if result.quick else ''}: claim "
          f"{held[summary.get('held')]}: {summary.get('verdict', '')}")
    print(f"computed {result.computed} of {len(result.rows)} cells")
    print(f"results: {result.csv}")
    print(f"figure: {result.png}")
    print(f"store: {result.db}")
    return 0


def add_experiment_parser(sub: Any) -> None:
    """Register ``experiment`` on the main parser's subparsers."""
    parser = sub.add_parser(
        "experiment", help="reproduce a seed's claim (resumable; CSV and PNG out)",
        description="Run or resume one experiment; results are stored per cell, so an "
                    "interrupted run continues where it stopped.")
    parser.add_argument("name", nargs="?", help="experiment name (see --list)")
    parser.add_argument("--list", action="store_true", help="list experiments and claims")
    parser.add_argument("--quick", action="store_true",
                        help="minute-scale version (its own results, kept apart)")
    parser.add_argument("--out", default="out/experiments",
                        help="directory for NAME.db, NAME.csv and NAME.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_experiment)
