"""Markdown tables of docs/results.md ("Every method on five problems") from a results database.

    .venv/bin/python scripts/all_methods_tables.py out/all_methods_tuned.db

One table per problem, sorted like ``synaprune results`` (success rate, then median final loss);
the method column gives the name and the options that differ from the method's own defaults
(the values tuned on that problem, docs/tuning.md).
"""

from __future__ import annotations

import argparse
import math

from synaprune.bench import ResultStore, method_label, summarize


def short(spec: str) -> str:
    """``name (key=value, ...)`` with only the options that differ from the class defaults."""
    name, *changed = method_label(spec).split(" ")
    return f"`{name}`" + (f" ({', '.join(changed)})" if changed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db")
    args = parser.parse_args()
    with ResultStore(args.db, readonly=True) as store:
        summaries = summarize(store.rows())
    for problem in sorted({s.problem for s in summaries}):
        rows = sorted((s for s in summaries if s.problem == problem),
                      key=lambda s: (-s.success_rate, s.median_final_loss))
        print(f"### {problem}: {rows[0].runs} seeds, {rows[0].budget} steps\n")
        print("| method (options other than its defaults) | success | 95% Wilson CI | diverged "
              "| median final loss | median steps to success | time/run |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for s in rows:
            loss = "inf" if math.isinf(s.median_final_loss) else f"{s.median_final_loss:.4g}"
            steps = "-" if s.median_steps_to_success is None else f"{s.median_steps_to_success:g}"
            print(f"| {short(s.method)} | {s.successes}/{s.runs} | "
                  f"[{100 * s.ci_low:.1f}%, {100 * s.ci_high:.1f}%] | {s.diverged} | {loss} | "
                  f"{steps} | {s.time_per_run:.3g} s |")
        print()


if __name__ == "__main__":
    main()
