"""Resumable sweeps: run the missing seeds of one (problem, method) in batches into a store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from synaprune.bench.kinds import REL_GRAD_TOL
from synaprune.bench.methods import Method
from synaprune.bench.runner import check_compatible, run_seeds
from synaprune.bench.store import ResultStore
from synaprune.problems import Problem

__all__ = ["SweepReport", "plan_blocks", "stop_rule", "sweep"]


def stop_rule(until_converged: bool = False, grad_tol: float | None = None) -> str | None:
    """The stored name of a stopping rule: None for the default (run to the budget, the relative
    gradient tolerance :data:`synaprune.bench.kinds.REL_GRAD_TOL`), else e.g.
    ``"until-converged,grad_tol=1e-08"`` or ``"budget,grad_tol=rel:1e-06"``.

    Example:
        >>> stop_rule(True), stop_rule(grad_tol=1e-8)
        ('until-converged,grad_tol=rel:1e-06', 'budget,grad_tol=1e-08')
    """
    if not until_converged and grad_tol is None:
        return None
    tol = f"rel:{REL_GRAD_TOL:g}" if grad_tol is None else f"{grad_tol:g}"
    return f"{'until-converged' if until_converged else 'budget'},grad_tol={tol}"


@dataclass(frozen=True)
class SweepReport:
    """What one call of :func:`sweep` did.

    Attributes:
        problem: Canonical problem spec.
        method: Canonical method spec.
        requested: Number of seeds asked for.
        skipped: Seeds already in the store (not rerun).
        ran: Seeds trained and written now.
    """

    problem: str
    method: str
    requested: int
    skipped: int
    ran: int


def plan_blocks(problem: Problem, method: Method, seeds: Sequence[int], steps: int,
                store: ResultStore, *, batch_seeds: int = 256) -> tuple[list[int], list[list[int]]]:
    """The seeds wanted (distinct, in order) and the blocks of seeds not yet stored, as
    :func:`sweep` trains them (``batch_seeds`` at a time, in order); also the Ray tasks of
    ``synaprune bench --ray``, so that both train the same blocks.

    Raises:
        ValueError: If the method cannot train the problem or ``batch_seeds < 1``.
    """
    check_compatible(problem, method)
    if batch_seeds < 1:
        raise ValueError(f"Invalid batch_seeds: {batch_seeds}; must be >= 1")
    wanted = list(dict.fromkeys(int(s) for s in seeds))
    done = store.done_seeds(problem, method, steps)
    todo = [s for s in wanted if s not in done]
    return wanted, [todo[lo:lo + batch_seeds] for lo in range(0, len(todo), batch_seeds)]


def sweep(
    problem: Problem,
    method: Method,
    seeds: Sequence[int],
    steps: int,
    store: ResultStore,
    *,
    batch_seeds: int = 256,
    on_step: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    until_converged: bool = False,
    grad_tol: float | None = None,
) -> SweepReport:
    """Train the seeds not yet stored, ``batch_seeds`` at a time, one transaction per batch.

    Because a seed's result does not depend on the other seeds of its batch, an interrupted
    sweep resumed later gives the same results as an uninterrupted one.

    Args:
        problem: The problem.
        method: The method.
        seeds: Model seeds to cover.
        steps: Step budget per run (part of the store's key).
        store: Where results go.
        batch_seeds: Seeds trained together (vectorised) per batch, >= 1.
        on_step: Passed to :func:`run_seeds`.
        on_batch: Called with the number of runs written after each batch.
        until_converged, grad_tol: The stopping rule and gradient tolerance
            (:func:`run_seeds`), stored with each run (:func:`stop_rule`); a store whose runs
            of this (problem, method, steps) used another rule is refused, so that one cell
            never mixes rules (and a finished run is never skipped for one of another rule).

    Returns:
        A :class:`SweepReport`.

    Raises:
        ValueError: If the method cannot train the problem, ``batch_seeds < 1``,
            ``grad_tol`` is not a positive number, or the store holds runs of this cell made
            with another stopping rule.
    """
    if grad_tol is not None and not grad_tol > 0:
        raise ValueError(f"Invalid grad_tol: {grad_tol}; must be a positive number")
    rule = stop_rule(until_converged, grad_tol)
    wanted, blocks = plan_blocks(problem, method, seeds, steps, store, batch_seeds=batch_seeds)
    other = store.stop_rules(problem, method, steps) - {rule}
    if other:
        name = sorted(str(r) if r is not None else "the default" for r in other)[0]
        raise ValueError(
            f"{store.path} already holds runs of {problem.spec} x {method.spec} with {steps} "
            f"steps made with stopping rule {name}, not {rule or 'the default'}; use another "
            "--db (or the same rule) so that one cell never mixes stopping rules")
    todo = [s for block in blocks for s in block]
    for batch in blocks:
        results = run_seeds(problem, method, batch, steps, on_step=on_step,
                            until_converged=until_converged, grad_tol=grad_tol)
        store.write(problem, method, steps, results, stop_rule=rule)
        if on_batch is not None:
            on_batch(len(batch))
    return SweepReport(problem.spec, method.spec, len(wanted), len(wanted) - len(todo),
                       len(todo))
