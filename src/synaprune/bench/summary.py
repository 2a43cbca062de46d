"""Summaries of stored runs: success rates with Wilson intervals, medians, and formatting.

Output formats, for ``synaprune results`` as for ``synaprune diagnose``: ``text`` (for a
terminal: each method by its :func:`~synaprune.bench.methods.method_label`, the name and the
options other than its defaults), ``csv`` and ``json`` (for machines: the full canonical
spec). ``table``, this format's earlier name, is still accepted for ``text``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from synaprune.bench.methods import method_label

__all__ = ["FORMATS", "Summary", "check_format", "format_summaries", "summarize",
           "wilson_interval"]

FORMATS = ("text", "csv", "json")
_ALIASES = {"table": "text"}  # the name before "text" was chosen for every command


def check_format(fmt: str) -> str:
    """The output format ``fmt`` names (``table`` is read as ``text``).

    Raises:
        ValueError: For an unknown format, naming the choices.
    """
    fmt = _ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format '{fmt}'; choose from: {', '.join(FORMATS)}")
    return fmt
_Z95 = 1.959963984540054  # standard normal quantile at 0.975


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    ``(p + z^2/(2n) -+ z sqrt(p(1-p)/n + z^2/(4n^2))) / (1 + z^2/n)``, p = successes / n.

    Args:
        successes: Number of successes, 0 <= successes <= n.
        n: Number of trials; with n = 0 the interval is (0, 1).
        z: Normal quantile (1.96 for 95 %).

    Returns:
        ``(low, high)`` within [0, 1].

    Raises:
        ValueError: If the counts are inconsistent.

    Example:
        >>> tuple(round(v, 4) for v in wilson_interval(0, 10))
        (0.0, 0.2775)
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"Invalid counts: {successes} successes out of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The bounds are exactly 0 at k = 0 and 1 at k = n; rounding must not move them.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class Summary:
    """Aggregate of the runs of one (problem, method, budget).

    Attributes:
        problem: Canonical problem spec.
        method: Canonical method spec.
        budget: Step budget.
        runs: Number of runs (seeds).
        successes: Runs that reached the global loss within tolerance.
        success_rate: successes / runs.
        ci_low, ci_high: 95 % Wilson interval of the success rate.
        diverged: Runs whose loss became NaN or infinite.
        median_final_loss: Median final loss, a diverged run counting as +inf.
        median_steps_to_success: Median over successful runs, None if none succeeded.
        time_per_run: Mean wall time per run, seconds.
    """

    problem: str
    method: str
    budget: int
    runs: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    diverged: int
    median_final_loss: float
    median_steps_to_success: float | None
    time_per_run: float


def summarize(rows: Iterable[dict[str, Any]]) -> list[Summary]:
    """Group runs by (problem, method, budget) and summarise each group.

    Args:
        rows: Runs as returned by :meth:`ResultStore.rows` (keys ``problem``, ``method``,
            ``budget``, ``success``, ``status``, ``final_loss``, ``steps_to_success``,
            ``wall_time``).

    Returns:
        Summaries sorted by problem, method, budget.
    """
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["problem"], row["method"], int(row["budget"])), []).append(row)
    out = []
    for (problem, method, budget), group in sorted(groups.items()):
        n = len(group)
        wins = sum(1 for r in group if r["success"])
        low, high = wilson_interval(wins, n)
        losses = [r["final_loss"] if math.isfinite(r["final_loss"]) else math.inf
                  for r in group]
        to_success = [r["steps_to_success"] for r in group if r["steps_to_success"] is not None]
        out.append(Summary(
            problem=problem, method=method, budget=budget, runs=n, successes=wins,
            success_rate=wins / n, ci_low=low, ci_high=high,
            diverged=sum(1 for r in group if r["status"] == "diverged"),
            median_final_loss=float(statistics.median(losses)),
            median_steps_to_success=(float(statistics.median(to_success)) if to_success
                                     else None),
            time_per_run=statistics.fmean(float(r["wall_time"]) for r in group),
        ))
    return out


def _table(summaries: Sequence[Summary]) -> str:
    blocks = []
    problems = sorted({s.problem for s in summaries})
    for problem in problems:
        header = ["method", "steps", "runs", "success", "95% CI", "diverged",
                  "median final loss", "median steps to success", "time/run"]
        lines = [header]
        for s in (s for s in summaries if s.problem == problem):
            lines.append([
                method_label(s.method), str(s.budget), str(s.runs),
                f"{100 * s.success_rate:.1f}% ({s.successes})",
                f"[{100 * s.ci_low:.1f}%, {100 * s.ci_high:.1f}%]",
                str(s.diverged), f"{s.median_final_loss:.4g}",
                "-" if s.median_steps_to_success is None else f"{s.median_steps_to_success:g}",
                f"{s.time_per_run:.3g} s",
            ])
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = [f"problem: {problem}"]
        for j, line in enumerate(lines):
            cells = [cell.ljust(w) if i == 0 else cell.rjust(w)
                     for i, (cell, w) in enumerate(zip(line, widths, strict=True))]
            text.append("  ".join(cells).rstrip())
            if j == 0:
                text.append("  ".join("-" * w for w in widths))
        blocks.append("\n".join(text))
    return "\n\n".join(blocks) if blocks else "no runs"


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def format_summaries(summaries: Sequence[Summary], fmt: str = "text") -> str:
    """Render summaries as a text table per problem, CSV, or JSON.

    Args:
        summaries: From :func:`summarize`.
        fmt: ``"text"`` (a table per problem, each method by its label: the name and the
            options other than its defaults), ``"csv"`` (one header line, then one line per
            summary) or ``"json"`` (a list of objects; infinite values as the strings
            ``"inf"``/``"-inf"``); csv and json give each method's full canonical spec.

    Returns:
        The text, without a trailing newline for ``text`` and ``json``.

    Raises:
        ValueError: For an unknown format.
    """
    fmt = check_format(fmt)
    if fmt == "text":
        return _table(summaries)
    if fmt == "json":
        return json.dumps([{k: _json_value(v) for k, v in asdict(s).items()}
                           for s in summaries], indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        names = list(Summary.__dataclass_fields__)
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(names)
        for s in summaries:
            writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v
                             for v in (getattr(s, k) for k in names)])
        return buffer.getvalue()
    raise AssertionError(fmt)  # check_format admits no other
