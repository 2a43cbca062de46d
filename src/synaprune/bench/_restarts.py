"""GD with restarts (``gd-restarts``): R fresh initialisations sharing one run's budget.

The protocol of a ``gd-restarts:lr=LR,restarts=R`` run with seed s and budget T:

* Restart r (r = 0, ..., R-1) is an ordinary ``gd:lr=LR`` run of the lab's protocol
  (:mod:`synaprune.bench.runner`) from ``problem.build_model(restart_seed(s, r))`` with a budget
  of ``T // R`` steps (the remainder ``T % R`` is not used, so the run never takes more than T
  steps). :func:`restart_seed` is ``s + r * 2**24``: restart 0 is exactly the ``gd`` run of
  seed s (so ``restarts=1`` equals ``gd`` and the two methods can be compared seed by seed), and
  no two (seed, restart) pairs share an initialisation. That needs seeds below 2**24 and at
  most 256 restarts: torch's CPU generator uses only the low 32 bits of its seed
  (``manual_seed(s)`` and ``manual_seed(s + 2**32)`` draw the same numbers), so the restart
  seeds must stay below 2**32.
* The restarts are tried in order and the run stops at the first one that solves the problem
  (loss within the tolerance), as the lab stops every run at success: the restarts after it
  count for nothing (not in ``steps``, not in the curve, not in the choice).
* The run's result is the best restart tried: the successful one if any, otherwise the one
  with the lowest final loss among those that did not diverge (the earliest on a tie; the
  first when every restart diverged: a diverged restart may stop at a finite loss, above
  :func:`synaprune.bench.kinds.divergence_bound` of its own start, which another restart's
  loss can exceed when it started higher).
  Its status, final loss, final parameters and final gradient norm are the run's; ``steps``
  (and ``steps_to_success``) are the total steps of the restarts tried, ``best_loss`` the
  lowest loss any of them saw, and ``wall_time`` the time of the restarts computed.
* The stored curve is the best-so-far loss against the total steps: restart r's points are
  shifted by the steps of the restarts before it, and each loss is the lower of that point's
  loss and the best final loss of the earlier restarts; the gradient norm is that of the
  restart running at that point. At each restart boundary two points share a step (the
  earlier restart's end, the next one's start). The last point is the run's final loss and
  final gradient norm. Each restart records about ``curve_points // R`` points.

:func:`synaprune.bench.run_seeds` trains the S x R initialisations together in one
seed-batched run (computing the restarts after a success too, then discarding them);
:func:`synaprune.bench.run_single` runs them one after another and stops at the first success;
both combine them with :func:`combine_restarts`, so they give the same result.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from synaprune.bench.methods import GDRestarts
from synaprune.bench.runner import RunResult
from synaprune.problems import Problem

__all__ = ["MAX_RESTARTS", "combine_restarts", "restart_seed", "run_restarts_batched",
           "run_restarts_single"]

# Seeds below 2**24, restarts below 2**8: every restart seed is below 2**32, the part of a seed
# that torch's CPU generator (mt19937) uses.
_SEED_STRIDE = 2**24
MAX_RESTARTS = 2**8


def restart_seed(seed: int, restart: int) -> int:
    """Model seed of restart ``restart`` of the run with seed ``seed``: ``seed + restart * 2**24``.

    Args:
        seed: The run's seed, in [0, 2**24).
        restart: The restart's index, in [0, 256) (restart 0 is the plain ``gd`` run's seed).

    Returns:
        The seed given to ``problem.build_model``, below 2**32.

    Raises:
        ValueError: If ``seed`` or ``restart`` is out of range (two runs could then share an
            initialisation).
    """
    if not 0 <= seed < _SEED_STRIDE:
        raise ValueError(f"Invalid seed for gd-restarts: {seed}; must be in [0, 2**24) so that "
                         "the restarts of different seeds never share an initialisation")
    if not 0 <= restart < MAX_RESTARTS:
        raise ValueError(f"Invalid restart index: {restart}; must be in [0, {MAX_RESTARTS})")
    return seed + restart * _SEED_STRIDE


def _loss_key(result: RunResult) -> float:
    # a diverged restart may stop at a finite loss (above the divergence bound): never kept
    # over one that did not diverge
    diverged = result.status == "diverged" or not math.isfinite(result.final_loss)
    return math.inf if diverged else result.final_loss


def combine_restarts(seed: int, restarts: Sequence[RunResult]) -> RunResult:
    """One ``gd-restarts`` run from its R restarts (in order), as the module docstring says.

    Args:
        seed: The run's seed.
        restarts: The R restarts' results, restart 0 first (each a full run of its budget).

    Returns:
        The run's :class:`RunResult` (a new object; the restarts are not changed).
    """
    if not restarts:
        raise ValueError("Invalid restarts: need at least one")
    first_ok = next((i for i, r in enumerate(restarts) if r.success), None)
    tried = list(restarts if first_ok is None else restarts[:first_ok + 1])
    # min() keeps the earliest on a tie; when all diverged every key is inf: the first.
    kept = tried[-1] if first_ok is not None else min(tried, key=_loss_key)
    curve: list[list[float | None]] = []
    offset, prior_best = 0, math.inf
    for r in tried:
        for step, loss, norm in r.curve:
            value = prior_best if loss is None else min(prior_best, loss)
            curve.append([offset + int(step), None if math.isinf(value) else value, norm])
        offset += r.steps
        prior_best = min(prior_best, _loss_key(r))
    final = kept.final_loss
    curve[-1] = [offset, final if math.isfinite(final) else None, kept.final_grad_norm]
    # The run's cost is that of every restart tried; its kind is the kept restart's.
    costs = [r.cost for r in tried]
    return dataclasses.replace(
        kept, seed=seed, steps=offset, steps_to_success=offset if kept.success else None,
        best_loss=min(r.best_loss for r in tried),
        wall_time=sum(r.wall_time for r in restarts), curve=curve,
        cost=None if any(c is None for c in costs) else float(sum(costs)))


def _inner(method: GDRestarts, steps: int, curve_points: int) -> tuple[int, int]:
    """Budget and curve points of each restart."""
    return steps // method.restarts, max(curve_points // method.restarts, 2)


def run_restarts_batched(
    run_seeds: Callable[..., list[RunResult]],
    problem: Problem,
    method: GDRestarts,
    seeds: Sequence[int],
    steps: int,
    *,
    curve_points: int,
    on_step: Callable[[int, int], None] | None,
    **stopping: Any,
) -> list[RunResult]:
    """``gd-restarts`` in the seed-batched runner: the S x R restarts in one ``run_seeds`` call
    (``run_seeds`` is passed in, as the runner imports this module). ``stopping``
    (``until_converged``, ``grad_tol``, ``classify``) applies to every restart."""
    r_count = method.restarts
    inner = [restart_seed(s, r) for s in seeds for r in range(r_count)]
    budget, points = _inner(method, steps, curve_points)
    results = run_seeds(problem, method.base, inner, budget, curve_points=points,
                        on_step=on_step, **stopping)
    return [combine_restarts(s, results[i * r_count:(i + 1) * r_count])
            for i, s in enumerate(seeds)]


def run_restarts_single(
    run_single: Callable[..., RunResult],
    problem: Problem,
    method: GDRestarts,
    seed: int,
    steps: int,
    *,
    curve_points: int,
    **stopping: Any,
) -> RunResult:
    """``gd-restarts`` in the plain loop: the R restarts one after another (``stopping`` as
    for :func:`run_restarts_batched`)."""
    budget, points = _inner(method, steps, curve_points)
    done: list[RunResult] = []
    for r in range(method.restarts):
        done.append(run_single(problem, method.base, restart_seed(seed, r), budget,
                               curve_points=points, **stopping))
        if done[-1].success:  # the later restarts would not be tried
            break
    return combine_restarts(seed, done)
