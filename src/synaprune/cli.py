"""The ``synaprune`` command line.

    synaprune demo                 # the main job: quick suite, a diagnosis, the HTML report
    synaprune demo xor             # plain SGD against SynaPrune on a net that GD leaves stuck
    synaprune bench --problem teacher-student:k=8 --method gd,adam --seeds 500 --db results.db
    synaprune results --db results.db --format text --plot out/success.png
    synaprune results --db results.db --runs --problem xor     # run ids, for diagnose --run
    synaprune diagnose --model mlp:4-8-1:tanh --checkpoint weights.pt --data data.npz
    synaprune diagnose --db results.db --run 14
    synaprune report --db results.db --out report/ --experiments out/experiments

Bad input gives one line on standard error and exit status 2, never a traceback: the
subcommands raise :class:`synaprune.errors.UsageError` for it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from synaprune import __version__
from synaprune.bench.cli import add_bench_parser, add_results_parser
from synaprune.diagnose.cli import add_diagnose_parser
from synaprune.errors import UsageError
from synaprune.experiments._cli import add_experiment_parser
from synaprune.report.cli import add_report_parser

__all__ = ["build_parser", "main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.which == "xor":
        from synaprune.demo import run_demo

        run_demo(steps=args.steps, seeds=args.seeds, plot=args.plot)
        return 0
    from synaprune.bench.suite import run_suite

    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    return run_suite(args.db, args.out, quiet=args.quiet, jobs=args.jobs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synaprune",
        description="Train past bad local minima, diagnose stuck runs, measure it honestly.",
    )
    parser.add_argument("--version", action="version", version=f"synaprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="the main job: a quick suite of the lab, a diagnosis, the report",
        description="'suite' (default, make demo): every method on a few problems (one from "
                    "the hard regime), resumable, then the diagnosis of a stuck run and the "
                    "HTML report, whose path is printed last. 'xor': plain SGD against "
                    "SynaPrune's mechanisms on XOR from random and symmetric starts.")
    demo.add_argument("which", nargs="?", choices=("suite", "xor"), default="suite",
                      help="suite (default) or xor")
    demo.add_argument("--db", default="out/demo/results.db",
                      help="suite: results database (default out/demo/results.db)")
    demo.add_argument("--out", default="out/demo/report",
                      help="suite: report folder (default out/demo/report)")
    demo.add_argument("--quiet", action="store_true", help="suite: no progress bars")
    demo.add_argument("--jobs", type=int, default=2,
                      help="suite: problems trained at once, one process each (default 2)")
    demo.add_argument("--steps", type=int, default=2000, help="xor: training steps per run")
    demo.add_argument("--seeds", type=int, default=8, help="xor: initialisations per method")
    demo.add_argument("--plot", default="out/demo.png",
                      help="xor: where to save the loss curves (PNG); '' for none")
    demo.set_defaults(func=_cmd_demo)

    add_bench_parser(sub)
    add_results_parser(sub)
    add_diagnose_parser(sub)
    add_experiment_parser(sub)
    add_report_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # inside the try: a closed pipe shows up here, not at exit
        return status
    except UsageError as exc:
        print(f"synaprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``synaprune results | head``): not an error of ours. Point
        # stdout at devnull so that the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
