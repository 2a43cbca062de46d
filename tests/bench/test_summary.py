"""Wilson intervals, per-(problem, method) summaries and the output formats."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from scipy.stats import binomtest

from synaprune.bench import format_summaries, get_method, summarize, wilson_interval

Z = 1.959963984540054


def _wilson_by_quadratic(k: int, n: int) -> tuple[float, float]:
    """The Wilson interval as the set of p with |k/n - p| <= z sqrt(p (1 - p) / n):
    roots of (1 + z^2/n) p^2 - (2 k/n + z^2/n) p + (k/n)^2 = 0."""
    ph = k / n
    a, b, c = 1 + Z * Z / n, -(2 * ph + Z * Z / n), ph * ph
    disc = math.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (17, 500),
                                      (250, 500), (499, 500)])
def test_wilson_matches_direct_formula(k: int, n: int) -> None:
    low, high = wilson_interval(k, n)
    ref_low, ref_high = _wilson_by_quadratic(k, n)
    assert low == pytest.approx(ref_low, abs=1e-12)
    assert high == pytest.approx(ref_high, abs=1e-12)
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_edge_cases() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(-1, 2)


def _row(problem: str, method: str, status: str, loss: float, to_success: int | None,
         wall: float = 1.0, budget: int = 100) -> dict:
    return {"problem": problem, "method": method, "budget": budget, "status": status,
            "success": status == "ok", "final_loss": loss, "steps_to_success": to_success,
            "wall_time": wall}


ROWS = [
    _row("p:a=1", "gd:lr=0.1", "ok", 0.001, 10, wall=1.0),
    _row("p:a=1", "gd:lr=0.1", "ok", 0.002, 30, wall=3.0),
    _row("p:a=1", "gd:lr=0.1", "budget", 0.5, None, wall=2.0),
    _row("p:a=1", "gd:lr=0.1", "diverged", math.nan, None, wall=2.0),
    _row("p:a=1", "adam:lr=0.01", "budget", 0.7, None),
    _row("q", "gd:lr=0.1", "ok", 0.0, 5),
]


def test_summarize_groups_and_medians() -> None:
    summaries = summarize(ROWS)
    assert [(s.problem, s.method) for s in summaries] == [
        ("p:a=1", "adam:lr=0.01"), ("p:a=1", "gd:lr=0.1"), ("q", "gd:lr=0.1")]
    gd = summaries[1]
    assert (gd.runs, gd.successes, gd.diverged) == (4, 2, 1)
    assert gd.success_rate == 0.5
    assert (gd.ci_low, gd.ci_high) == wilson_interval(2, 4)
    # losses 0.001, 0.002, 0.5, +inf (diverged counts as worst): median 0.251
    assert gd.median_final_loss == pytest.approx(0.251)
    assert gd.median_steps_to_success == 20.0
    assert gd.time_per_run == 2.0
    assert summaries[0].median_steps_to_success is None


def test_text_format_has_one_table_per_problem() -> None:
    text = format_summaries(summarize(ROWS), "text")
    assert text.count("problem: ") == 2
    assert "problem: p:a=1" in text and "problem: q" in text
    gd_line = next(line for line in text.splitlines() if line.startswith("gd ")
                   and " 4 " in line)
    assert "50.0% (2)" in gd_line and "[15.0%, 85.0%]" in gd_line and "0.251" in gd_line
    assert format_summaries([], "text") == "no runs"
    assert format_summaries(summarize(ROWS), "table") == text  # the older name of the format


def test_text_table_names_methods_by_label_and_machines_get_the_spec() -> None:
    """A terminal table, not ~290-character specs; csv and json keep the full spec."""
    spec = get_method("synaprune:lr=0.5,noise=0.02").spec
    assert len(spec) > 250
    rows = [_row("p", spec, "ok", 0.001, 10), _row("p", get_method("adam").spec, "ok", 0.0, 5)]
    text = format_summaries(summarize(rows), "text")
    assert max(len(line) for line in text.splitlines()) < 140
    assert any(line.startswith("synaprune lr=0.5 noise=0.02 ") for line in text.splitlines())
    assert any(line.startswith("adam ") for line in text.splitlines())
    assert spec not in text
    assert [d["method"] for d in json.loads(format_summaries(summarize(rows), "json"))] == \
        sorted([spec, get_method("adam").spec])
    csv_methods = [r["method"] for r in csv.DictReader(io.StringIO(
        format_summaries(summarize(rows), "csv")))]
    assert sorted(csv_methods) == sorted([spec, get_method("adam").spec])


def test_csv_format_parses_back() -> None:
    text = format_summaries(summarize(ROWS), "csv")
    records = list(csv.DictReader(io.StringIO(text)))
    assert len(records) == 3
    assert records[1]["method"] == "gd:lr=0.1" and records[1]["runs"] == "4"
    assert float(records[1]["ci_high"]) == pytest.approx(wilson_interval(2, 4)[1])
    assert records[0]["median_steps_to_success"] == ""


def test_json_format_parses_back() -> None:
    rows = [*ROWS, _row("r", "gd:lr=0.1", "diverged", math.nan, None)]
    data = json.loads(format_summaries(summarize(rows), "json"))
    assert [d["problem"] for d in data] == ["p:a=1", "p:a=1", "q", "r"]
    assert data[1]["successes"] == 2 and data[1]["median_steps_to_success"] == 20.0
    assert data[3]["median_final_loss"] == "inf"  # strict JSON, no Infinity token
    with pytest.raises(ValueError, match="text, csv, json"):
        format_summaries([], "xml")


def _kind_row(kind: str | None, cost: float | None, success: bool = False) -> dict:
    row = _row("p", "gd:lr=0.1", "ok" if success else "budget", 0.001 if success else 0.5,
               int(cost) if success and cost is not None else None)
    row.update(kind=kind, cost=cost)
    return row


KIND_ROWS = [
    _kind_row("global", 40.0, True), _kind_row("global", 90.0, True),
    _kind_row("spurious", 100.0), _kind_row("saddle", 100.0), _kind_row("moving", 100.0),
    _kind_row(None, None), _kind_row(None, None, True),  # an older database: not recorded
]


def test_summary_counts_kinds_and_says_what_was_not_recorded() -> None:
    (s,) = summarize(KIND_ROWS)
    assert (s.kind_global, s.kind_spurious, s.kind_saddle, s.kind_moving) == (2, 1, 1, 1)
    assert (s.kind_unstable, s.kind_diverged, s.kind_not_recorded) == (0, 0, 2)
    assert s.runs == 7 and s.successes == 3  # the old successful run is still a success
    assert s.median_cost == 100.0 and s.cost_not_recorded == 2
    text = format_summaries([s], "text")
    assert "not recorded" in text and "spurious minimum" in text and "still moving" in text
    record = json.loads(format_summaries([s], "json"))[0]
    assert record["kind_spurious"] == 1 and record["kind_not_recorded"] == 2
    csv_rows = list(csv.DictReader(io.StringIO(format_summaries([s], "csv"))))
    assert csv_rows[0]["kind_saddle"] == "1" and csv_rows[0]["median_cost"] == "100.0"


def test_summary_at_cost_counts_success_within_the_cost_and_leaves_out_unknown_costs() -> None:
    """At C = 50 only the run that succeeded at cost 40 counts; the one at 90 had not ended
    (unfinished), nor had the failures at cost 100; runs without a cost are left out."""
    (s,) = summarize(KIND_ROWS, at_cost=50.0)
    assert (s.runs, s.successes, s.kind_global, s.kind_unfinished) == (5, 1, 1, 4)
    assert s.cost_not_recorded == 2 and s.at_cost == 50.0
    assert s.median_steps_to_success == 40.0
    (t,) = summarize(KIND_ROWS, at_cost=100.0)  # "<= C": everything recorded has ended
    assert (t.runs, t.successes, t.kind_unfinished, t.kind_spurious) == (5, 2, 0, 1)
    assert "success at cost 50" in format_summaries([s], "text")
    with pytest.raises(ValueError, match="at_cost"):
        summarize(KIND_ROWS, at_cost=0.0)
