"""What the report computes from stored runs: outcomes, loss bands, equal-step and equal-cost
success.

Conventions (stated on the page too):

* A run's outcome is its stored failure kind when the database records one, else what its
  status says: ``global`` for a success (status ``ok``), ``diverged``, and ``unknown`` (failed,
  kind not recorded) for a run that ran out of steps.
* A loss curve is a step function: at step t a run's loss is the one recorded at the latest
  curve point at or before t, so a run that stopped (solved, or out of budget) holds its final
  loss, and a run whose loss became non-finite holds +inf from then on.
* Quantiles over seeds are order statistics (``numpy.quantile(method="inverted_cdf")``): each
  is the loss of an actual run, and +inf (a diverged run) is a value like any other.
* Cost is in gradient-equivalents (one full-batch gradient = 1), stored per run; a run's cost
  per step is its cost over its steps. The equal-cost budget of a problem is the smallest,
  over its methods, of budget x median cost per step: every method gets the same cost.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from synaprune.bench.summary import wilson_interval
from synaprune.report._data import FAILURE_KINDS

__all__ = ["OUTCOMES", "Band", "cost_per_step", "equal_budget_success", "kind_mismatches",
           "loss_band", "median_cost_per_step", "outcome", "outcome_counts",
           "stuck_runs"]

# Every outcome a run can have, in the order figures stack them.
OUTCOMES = ("global", *FAILURE_KINDS, "unknown")


def outcome(row: dict[str, Any]) -> str:
    """The outcome of one stored run: its recorded kind, else from its status.

    Args:
        row: A run of :func:`synaprune.report._data.load_runs` (keys ``kind``, ``status``,
            ``success``).

    Returns:
        One of :data:`OUTCOMES`.
    """
    kind = row.get("kind")
    if kind in OUTCOMES and kind != "unknown":
        return str(kind)
    if row["success"]:
        return "global"
    if row["status"] == "diverged":
        return "diverged"
    return "unknown"


def kind_mismatches(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs whose recorded kind contradicts their status: a success not of kind ``global``,
    a failure of kind ``global``, a diverged run of another kind, or a kind the report does
    not know. Such a row means the kind and the status were computed by different rules."""
    out = []
    for row in rows:
        kind = row.get("kind")
        if kind is None:
            continue
        if (kind not in OUTCOMES or kind == "unknown"
                or (kind == "global") != bool(row["success"])
                or (row["status"] == "diverged") != (kind == "diverged")):
            out.append(row)
    return out


def outcome_counts(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[int, float, float]]:
    """Count each outcome among ``rows``, with its 95 % Wilson interval.

    Returns:
        ``{outcome: (count, low, high)}`` for every outcome of :data:`OUTCOMES`, in order
        (zero counts included).
    """
    n = len(rows)
    counts = dict.fromkeys(OUTCOMES, 0)
    for row in rows:
        counts[outcome(row)] += 1
    return {k: (c, *wilson_interval(c, n)) for k, c in counts.items()}


def cost_per_step(row: dict[str, Any]) -> float | None:
    """A run's stored cost over its steps (None when its cost is not recorded); a run of 0
    steps has cost per step 0 (it spent nothing)."""
    cost = row.get("cost")
    if cost is None:
        return None
    return float(cost) / row["steps"] if row["steps"] > 0 else 0.0


@dataclass(frozen=True)
class Band:
    """Quantiles of the loss over seeds on a grid.

    Attributes:
        x: Grid (steps, or cost), ascending, size [G].
        low, median, high: 10 %, 50 % and 90 % quantiles at each grid point, size [G]
            (+inf where a diverged run is that quantile).
        runs: Number of runs.
    """

    x: np.ndarray
    low: np.ndarray
    median: np.ndarray
    high: np.ndarray
    runs: int


def _curve_xy(row: dict[str, Any], scale: float) -> tuple[np.ndarray, np.ndarray]:
    pts = [(p[0] * scale, math.inf if p[1] is None else float(p[1])) for p in row["curve"]]
    x = np.array([p[0] for p in pts], dtype=np.float64)
    y = np.array([p[1] for p in pts], dtype=np.float64)
    return x, np.where(np.isfinite(y), y, np.inf)


def _axis_scale(row: dict[str, Any], cost: bool) -> float | None:
    """Steps to the x axis: 1 per step, or the run's cost per step with ``cost`` (None when
    its cost is not recorded)."""
    return cost_per_step(row) if cost else 1.0


def loss_band(rows: Sequence[dict[str, Any]], *, cost: bool = False,
              quantiles: tuple[float, float, float] = (0.1, 0.5, 0.9)) -> Band | None:
    """The loss over seeds: low, median and high quantiles on the union of the curves' points.

    Args:
        rows: Runs with stored curves (``[[step, loss, grad_norm], ...]``).
        cost: Put the curves on a cost axis (step x the run's cost per step) instead of steps;
            runs whose cost is not recorded are left out.
        quantiles: The three quantiles.

    Returns:
        The :class:`Band`, or None when no run has a curve (or, with ``cost``, a cost).
    """
    curves = []
    for row in rows:
        scale = _axis_scale(row, cost)
        if scale is not None and row["curve"]:
            curves.append(_curve_xy(row, scale))
    if not curves:
        return None
    grid = np.unique(np.concatenate([x for x, _ in curves]))
    values = np.empty((len(curves), grid.size))
    for i, (x, y) in enumerate(curves):
        # index of the last point at or before each grid value; before the first: its value
        idx = np.searchsorted(x, grid, side="right") - 1
        values[i] = y[np.clip(idx, 0, None)]
    low, med, high = (np.quantile(values, q, axis=0, method="inverted_cdf") for q in quantiles)
    return Band(x=grid, low=low, median=med, high=high, runs=len(curves))


def equal_budget_success(rows: Sequence[dict[str, Any]], budget: float, *,
                         cost: bool = False) -> tuple[int, int] | None:
    """Successes within a common budget of steps (or of cost), and the runs counted.

    A run counts as a success within ``budget`` when it succeeded at a step (or cost
    steps_to_success x cost per step) at most ``budget``. With ``cost``, runs whose cost is
    not recorded are left out; None when none is left.
    """
    wins = n = 0
    for row in rows:
        scale = _axis_scale(row, cost)
        if scale is None:
            continue
        n += 1
        if row["success"] and row["steps_to_success"] is not None \
                and row["steps_to_success"] * scale <= budget * (1 + 1e-12):
            wins += 1
    return (wins, n) if n else None


def median_cost_per_step(rows: Sequence[dict[str, Any]]) -> float | None:
    """Median of :func:`cost_per_step` over the runs that record a cost, or None."""
    values = [c for c in (cost_per_step(r) for r in rows if r["steps"] > 0) if c is not None]
    return float(statistics.median(values)) if values else None


def stuck_runs(rows: Sequence[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Up to ``count`` stuck runs (status ``budget``) worth diagnosing: one per (method,
    budget) in turn, those with the most stuck runs first (ties by method spec), within one
    the lowest seed first; the same choice for the same rows.

    Args:
        rows: Stored runs.
        count: How many to pick at most.

    Returns:
        The picked rows, in the order picked.
    """
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "budget":
            groups.setdefault((row["method"], int(row["budget"])), []).append(row)
    queues = sorted(((-len(g), key, sorted(g, key=lambda r: (r["seed"], r["id"])))
                     for key, g in groups.items()), key=lambda q: q[:2])
    picks: list[dict[str, Any]] = []
    depth = 0
    while len(picks) < count and any(len(q[2]) > depth for q in queues):
        for q in queues:
            if len(picks) < count and len(q[2]) > depth:
                picks.append(q[2][depth])
        depth += 1
    return picks
