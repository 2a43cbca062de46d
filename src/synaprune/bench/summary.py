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

from synaprune.bench.kinds import KIND_LABELS, KINDS
from synaprune.bench.methods import method_label

__all__ = ["FORMATS", "KIND_FIELDS", "Summary", "check_format", "format_summaries", "summarize",
           "wilson_interval"]

# The Summary fields counting runs by kind, in KINDS order, then the runs without a kind (an
# older database or row) and, with ``at_cost``, the runs that had not ended at that cost.
KIND_FIELDS = (*(f"kind_{k}" for k in KINDS), "kind_not_recorded", "kind_unfinished")

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
        diverged: Runs whose loss became NaN or infinite or rose above
            :func:`synaprune.bench.kinds.divergence_bound`.
        median_final_loss: Median final loss, a diverged run counting as +inf.
        median_steps_to_success: Median over successful runs, None if none succeeded.
        time_per_run: Mean wall time per run, seconds.
        kind_global, kind_spurious, kind_saddle, kind_moving, kind_unstable, kind_diverged:
            Runs of each kind (:mod:`synaprune.bench.kinds`).
        kind_not_recorded: Runs stored without a kind (an older database or row).
        kind_unfinished: With ``at_cost``: runs whose cost exceeded it before they ended (their
            kind at that cost is unknown); 0 otherwise.
        median_cost: Median cost per run in gradient-equivalents over the runs that recorded
            one (None if none did).
        cost_not_recorded: Runs stored without a cost.
        at_cost: The cost C the success counts are taken at (None: at the run's end).
        stop_rule: The runs' stopping rule (:func:`synaprune.bench.sweep.stop_rule`, None:
            the default); several are joined with ``|`` (a cell never mixes them when written
            by ``bench``).
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
    kind_global: int = 0
    kind_spurious: int = 0
    kind_saddle: int = 0
    kind_moving: int = 0
    kind_unstable: int = 0
    kind_diverged: int = 0
    kind_not_recorded: int = 0
    kind_unfinished: int = 0
    median_cost: float | None = None
    cost_not_recorded: int = 0
    at_cost: float | None = None
    stop_rule: str | None = None


def _at_cost(row: dict[str, Any], at_cost: float | None) -> dict[str, Any]:
    """The row as seen at cumulative cost C: a run that ended within C is unchanged; one that
    cost more had not ended at C, so it is no success and its kind is ``unfinished``. (A run
    stops at its first success, so "success within C" is "success and cost <= C".)"""
    if at_cost is None or row.get("cost") is None or row["cost"] <= at_cost:
        return row
    return {**row, "success": False, "kind": "unfinished", "steps_to_success": None}


def summarize(rows: Iterable[dict[str, Any]], *, at_cost: float | None = None
              ) -> list[Summary]:
    """Group runs by (problem, method, budget) and summarise each group.

    Args:
        rows: Runs as returned by :meth:`ResultStore.rows` (keys ``problem``, ``method``,
            ``budget``, ``success``, ``status``, ``final_loss``, ``steps_to_success``,
            ``wall_time``; optionally ``kind``, ``cost``, ``stop_rule``).
        at_cost: Count successes at this cumulative cost C (gradient-equivalents) instead of
            at the end: a run succeeds at C when it succeeded and its cost (which stops growing
            at its first success) is <= C. Runs without a recorded cost cannot be judged:
            they are left out (``runs`` does not count them; ``cost_not_recorded`` does).

    Returns:
        Summaries sorted by problem, method, budget.

    Raises:
        ValueError: If ``at_cost`` is not a positive number.
    """
    if at_cost is not None and not (at_cost > 0 and math.isfinite(at_cost)):
        raise ValueError(f"Invalid at_cost: {at_cost}; must be a positive number")
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["problem"], row["method"], int(row["budget"])), []).append(row)
    out = []
    for (problem, method, budget), every in sorted(groups.items()):
        no_cost = sum(1 for r in every if r.get("cost") is None)
        group = [_at_cost(r, at_cost) for r in every
                 if at_cost is None or r.get("cost") is not None]
        if not group:
            continue
        n = len(group)
        kinds = {f: 0 for f in KIND_FIELDS}
        for r in group:
            kind = r.get("kind")
            kinds["kind_not_recorded" if kind is None else f"kind_{kind}"] += 1
        costs = [float(r["cost"]) for r in every if r.get("cost") is not None]
        rules = sorted({str(r.get("stop_rule")) for r in every if r.get("stop_rule")})
        wins = sum(1 for r in group if r["success"])
        low, high = wilson_interval(wins, n)
        losses = [math.inf if r["status"] == "diverged" or not math.isfinite(r["final_loss"])
                  else r["final_loss"] for r in group]
        to_success = [r["steps_to_success"] for r in group if r["steps_to_success"] is not None]
        out.append(Summary(
            problem=problem, method=method, budget=budget, runs=n, successes=wins,
            success_rate=wins / n, ci_low=low, ci_high=high,
            diverged=sum(1 for r in group if r["status"] == "diverged"),
            median_final_loss=float(statistics.median(losses)),
            median_steps_to_success=(float(statistics.median(to_success)) if to_success
                                     else None),
            time_per_run=statistics.fmean(float(r["wall_time"]) for r in group),
            **kinds, median_cost=float(statistics.median(costs)) if costs else None,
            cost_not_recorded=no_cost, at_cost=at_cost,
            stop_rule="|".join(rules) if rules else None,
        ))
    return out


def _aligned(lines: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as text: the first column left-aligned, the others right-aligned, a rule
    under the header (the first row)."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = []
    for j, line in enumerate(lines):
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(line, widths, strict=True))]
        text.append("  ".join(cells).rstrip())
        if j == 0:
            text.append("  ".join("-" * w for w in widths))
    return text


def _kinds_table(group: Sequence[Summary]) -> list[str]:
    """How the runs ended, a row per method: counts of each kind, then the runs stored
    without a kind ("not recorded") and, at a cost, those unfinished by then; and the median
    cost per run in gradient-equivalents."""
    fields = [f for f in KIND_FIELDS
              if f not in ("kind_not_recorded", "kind_unfinished")
              or any(getattr(s, f) for s in group)]
    names = {f"kind_{k}": KIND_LABELS[k] for k in KINDS}
    names.update(kind_not_recorded="not recorded", kind_unfinished="unfinished at cost")
    lines = [["how runs ended", "steps", *(names[f] for f in fields), "median cost"]]
    for s in group:
        lines.append([method_label(s.method), str(s.budget),
                      *(str(getattr(s, f)) for f in fields),
                      "not recorded" if s.median_cost is None else f"{s.median_cost:.4g}"])
    return _aligned(lines)


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
        text = [f"problem: {problem}"]
        group = [s for s in summaries if s.problem == problem]
        at = {s.at_cost for s in group} - {None}
        if at:
            text.append(f"success at cost {min(at):g} gradient-equivalents: a run counts if it "
                        "succeeded within that cost; losses, times and median cost are at the "
                        "runs' ends; runs without a recorded cost left out: "
                        f"{sum(s.cost_not_recorded for s in group)}")
        rules = {s.stop_rule for s in group} - {None}
        if rules:
            text.append("stopping rule: " + "; ".join(sorted(str(r) for r in rules)))
        text.extend(_aligned(lines))
        text.append("")
        text.extend(_kinds_table(group))
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
