"""The lab's sweeps on a Ray cluster: ``synaprune bench ... --ray auto|ADDRESS``.

Each block of seeds that :func:`synaprune.bench.sweep.sweep` would train in turn
(:func:`~synaprune.bench.sweep.plan_blocks`: the same blocks, so the same results) becomes one
Ray task, :func:`run_block`, which calls :func:`synaprune.bench.runner.run_seeds` on a worker and
returns the block's results. The driver is the only writer of the SQLite store: it writes each
block in one transaction (:meth:`ResultStore.write`) as soon as the block arrives, in whatever
order blocks finish. Hence:

* a killed driver loses only the blocks in flight; every block written is whole, and a rerun
  trains only the seeds not stored (the store's UNIQUE key rules out duplicates as well);
* a lost worker (its process killed, its node gone) makes Ray rerun its task, up to
  ``max_retries`` times; a block is written once, when its task first returns. An exception
  raised by the training code itself is not retried (it would raise again): the sweep stops,
  keeping the blocks already written, and says which block failed;
* the seeds' results do not depend on where or in which order the blocks ran: a run's noise and
  minibatches come from its own seed only (see :mod:`synaprune.bench.runner`).

The problem and method objects are shipped to the workers as they are (cloudpickle), so a
cluster's workers need this package importable (``pip install synaprune[ray]`` on each node).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from synaprune.bench.methods import Method
from synaprune.bench.runner import RunResult, run_seeds
from synaprune.bench.store import ResultStore
from synaprune.bench.sweep import SweepReport, plan_blocks
from synaprune.errors import UsageError
from synaprune.problems import Problem

__all__ = ["connect", "run_block", "sweep_ray"]

BlockFn = Callable[[Problem, Method, Sequence[int], int, int], list[RunResult]]


def connect(address: str) -> None:
    """Connect this process to Ray (once; a connected process is left as it is).

    Args:
        address: ``"auto"``: the cluster running on this machine or named by ``RAY_ADDRESS``,
            or, when none is, a new local one with every CPU; otherwise a cluster address
            (``HOST:PORT`` of its head, or ``ray://HOST:10001``).

    Raises:
        UsageError: ray is not installed, or no cluster answers at ``address``.
    """
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs the ray package: pip install 'synaprune[ray]'") from None
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                  logging_level="warning")
    if address != "auto":
        _check_reachable(address)
    # Ray reports usage statistics to its authors' server by default; a cluster this command
    # starts does not (an explicit RAY_USAGE_STATS_ENABLED=1 is respected).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if address == "auto":
            try:
                ray.init(address="auto", **kwargs)
            except ConnectionError:  # no cluster running here: start one on this machine,
                ray.init(_node_ip_address="127.0.0.1", **kwargs)  # on the loopback only
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--ray {address}: cannot connect to a Ray cluster: {first}") from None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse at once an address where nothing listens (Ray itself retries for minutes)."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray {address}: expected 'auto', HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"--ray {address}: nothing answers at {host}:{port} ({exc}); start "
                         f"the cluster (ray start --head) or check the address") from None


def run_block(problem: Problem, method: Method, seeds: Sequence[int], steps: int,
              threads: int = 1) -> list[RunResult]:
    """Train one block of seeds on this process (a Ray worker): :func:`run_seeds` with
    ``threads`` torch intra-op threads."""
    torch.set_num_threads(threads)
    return run_seeds(problem, method, list(seeds), steps)


@dataclass
class _Job:
    problem: Problem
    method: Method
    wanted: int
    todo: int


def sweep_ray(
    jobs: Sequence[tuple[Problem, Method]],
    seeds: Sequence[int],
    steps: int,
    store: ResultStore,
    *,
    batch_seeds: int = 256,
    threads: int = 1,
    max_retries: int = 3,
    on_batch: Callable[[int], None] | None = None,
    block_fn: BlockFn = run_block,
) -> list[SweepReport]:
    """Train the missing seeds of every (problem, method) as Ray tasks, one per block.

    Every block of every job is submitted at once (so the cluster stays busy across jobs); the
    driver writes each finished block into ``store`` in one transaction, then calls
    ``on_batch(len(block))``. Ray must be connected (:func:`connect`).

    Args:
        jobs: The (problem, method) pairs.
        seeds: Model seeds to cover for each pair.
        steps: Step budget per run.
        store: Where results go; only this process writes it.
        batch_seeds: Seeds per block (trained together, vectorised, by one task), >= 1.
        threads: torch threads per task; also the CPUs each task asks Ray for.
        max_retries: How often Ray reruns a task whose worker died.
        on_batch: Called with the number of runs written after each block.
        block_fn: What each task runs (default :func:`run_block`); same signature.

    Returns:
        One :class:`SweepReport` per job, in the order of ``jobs``.

    Raises:
        ValueError: A method cannot train its problem, or bad counts.
        RuntimeError: A task failed for good (an exception in training, or its worker died
            more than ``max_retries`` times); the blocks written before are kept.
    """
    import ray

    if threads < 1:
        raise ValueError(f"Invalid threads: {threads}; must be >= 1")
    if max_retries < 0:
        raise ValueError(f"Invalid max_retries: {max_retries}; must be >= 0")
    task = ray.remote(block_fn).options(num_cpus=threads, max_retries=max_retries,
                                        retry_exceptions=False)
    plans = []
    for problem, method in jobs:
        wanted, blocks = plan_blocks(problem, method, seeds, steps, store,
                                     batch_seeds=batch_seeds)
        plans.append((_Job(problem, method, len(wanted), sum(map(len, blocks))), blocks))
    pending: dict[Any, tuple[_Job, list[int]]] = {}
    try:
        for job, blocks in plans:
            if not blocks:
                continue
            problem_ref, method_ref = ray.put(job.problem), ray.put(job.method)
            for block in blocks:
                ref = task.remote(problem_ref, method_ref, block, steps, threads)
                pending[ref] = (job, block)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            job, block = pending.pop(ref)
            try:
                results = ray.get(ref)
            except (ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.NodeDiedError, ray.exceptions.RayError) as exc:
                cause = str(exc).strip().splitlines()
                raise RuntimeError(
                    f"the Ray task for {job.problem.spec} {job.method.label} seeds "
                    f"{block[0]}..{block[-1]} failed ({type(exc).__name__}: "
                    f"{cause[-1] if cause else ''}); the blocks written before are kept, "
                    f"and a rerun resumes") from None
            if sorted(r.seed for r in results) != sorted(block):
                raise RuntimeError(f"a Ray task returned seeds {[r.seed for r in results]} "
                                   f"for the block {block}: not written")
            store.write(job.problem, job.method, steps, results)
            if on_batch is not None:
                on_batch(len(block))
    finally:
        for ref in pending:  # interrupted: stop what nobody will write
            ray.cancel(ref)
    return [SweepReport(job.problem.spec, job.method.spec, job.wanted, job.wanted - job.todo,
                        job.todo) for job, _ in plans]
