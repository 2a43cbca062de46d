"""``python -m synaprune.bench bench|results ...``: the two subcommands without the main CLI.

Same behaviour as ``synaprune bench`` / ``synaprune results``: bad input prints one line and
exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from synaprune.bench.cli import add_bench_parser, add_results_parser
from synaprune.cli import UsageError


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m synaprune.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    add_results_parser(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"synaprune {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
