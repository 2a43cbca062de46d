"""The ``report`` subcommand, registered into the main ``synaprune`` parser.

    synaprune report --db results.db --out report/
    synaprune report --db results.db --out report/ --experiments out/experiments
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_report_parser", "cmd_report"]


def cmd_report(args: argparse.Namespace) -> int:
    """Run ``synaprune report``: write the report folder and print its index.html's path."""
    from synaprune.report.build import write_report

    index = write_report(args.db, args.out, problems=args.problem,
                         experiments=args.experiments, date=args.date,
                         diagnoses=args.diagnoses, progress=False if args.quiet else None)
    print(f"report: {index}")
    return 0


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``report`` on the main parser's subparsers.

    Args:
        subparsers: The object returned by ``parser.add_subparsers()``.

    Returns:
        The new subparser (its ``func`` default is :func:`cmd_report`).
    """
    p = subparsers.add_parser(
        "report", help="one static HTML report of a results database (and experiments)",
        description="Write a self-contained folder (index.html and PNG figures, nothing from "
                    "the network): per problem the outcomes with Wilson intervals, loss-curve "
                    "bands, final losses, diagnoses of stuck runs; the experiments' claims. "
                    "The same database gives the same bytes; the folder is replaced only "
                    "when the new report is complete.")
    p.add_argument("--db", default="results.db", help="SQLite results file (default results.db)")
    p.add_argument("--out", default="report", help="report folder (default report)")
    p.add_argument("--problem", action="append",
                   help="keep only this problem: a name or a full spec (repeatable)")
    p.add_argument("--experiments", metavar="DIR", default=None,
                   help="include the experiments stored in DIR (synaprune experiment --out DIR)")
    p.add_argument("--date", default=None,
                   help="the date the header states (default: the newest run's time, so that "
                        "a rebuild gives the same page)")
    p.add_argument("--diagnoses", type=int, default=3,
                   help="stuck runs to diagnose per problem (default 3; 0: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_report)
    return p
