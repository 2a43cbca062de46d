"""Resumable sweeps: run the missing seeds of one (problem, method) in batches into a store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from synaprune.bench.methods import Method
from synaprune.bench.runner import check_compatible, run_seeds
from synaprune.bench.store import ResultStore
from synaprune.problems import Problem

__all__ = ["SweepReport", "plan_blocks", "sweep"]


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

    Returns:
        A :class:`SweepReport`.

    Raises:
        ValueError: If the method cannot train the problem or ``batch_seeds < 1``.
    """
    wanted, blocks = plan_blocks(problem, method, seeds, steps, store, batch_seeds=batch_seeds)
    todo = [s for block in blocks for s in block]
    for batch in blocks:
        results = run_seeds(problem, method, batch, steps, on_step=on_step)
        store.write(problem, method, steps, results)
        if on_batch is not None:
            on_batch(len(batch))
    return SweepReport(problem.spec, method.spec, len(wanted), len(wanted) - len(todo),
                       len(todo))
