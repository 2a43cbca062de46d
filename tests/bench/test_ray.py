"""``synaprune bench --ray``: blocks of seeds as Ray tasks on a local 2-CPU cluster started here.

Every test compares the Ray sweep's store with a local sweep's, run for run: every column but
the row id, the time of writing and the wall time, and the final parameters bit for bit (the
same blocks of the same seeds through the same code on one thread: equality, not closeness, is
the claim). One cluster serves the whole module (Ray takes seconds to start).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import ray
import torch

from synaprune.bench import get_method
from synaprune.bench._ray import _check_reachable, run_block, sweep_ray
from synaprune.bench.store import ResultStore
from synaprune.bench.sweep import sweep
from synaprune.cli import main
from synaprune.errors import UsageError
from synaprune.problems import get_problem

PROBLEM = "xor"
METHODS = ("gd:lr=2", "synaprune-ab")  # deterministic, and with per-seed weight noise (B)
SEEDS = list(range(8))
STEPS = 200
BLOCK = 2  # 4 blocks per method


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning",
             _node_ip_address="127.0.0.1")  # the cluster's traffic stays on the loopback
    # The workers cannot import this test file: ship its functions (block_fn below) by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def _jobs():
    problem = get_problem(PROBLEM)
    return [(problem, get_method(m, problem=PROBLEM)) for m in METHODS]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The reference: the same sweeps in this process."""
    store = ResultStore(tmp_path_factory.mktemp("local") / "local.db")
    for problem, method in _jobs():
        sweep(problem, method, SEEDS, STEPS, store, batch_seeds=BLOCK)
    return store


def _runs(store: ResultStore) -> dict[tuple[str, int], dict]:
    out = {}
    for r in store.rows():
        key = (r["method"], r["seed"])
        assert key not in out, f"duplicate run {key}"
        params = store.load_params(r["id"])
        out[key] = {k: v for k, v in r.items() if k not in ("id", "created", "wall_time")}
        out[key]["params"] = params
    return out


def _assert_same_runs(store: ResultStore, local: ResultStore) -> None:
    got, want = _runs(store), _runs(local)
    assert sorted(got) == sorted(want)
    assert len(want) == len(METHODS) * len(SEEDS)
    for key, run in want.items():
        other = dict(got[key])
        p, q = other.pop("params"), dict(run).pop("params")
        assert other == {k: v for k, v in run.items() if k != "params"}, key
        assert p.keys() == q.keys() and all(torch.equal(p[k], q[k]) for k in p), key


def test_cli_ray_sweep_equals_the_local_sweep_and_counts_runs(cluster, local, tmp_path, capsys):
    db = tmp_path / "ray.db"
    args = ["bench", "--problem", PROBLEM, "--seeds", "8", "--steps", str(STEPS),
            "--batch-seeds", str(BLOCK), "--db", str(db), "--ray", "auto"]
    for m in METHODS:
        args += ["--method", m]
    # Half the seeds first, then all: the bar starts from the stored runs and counts the rest.
    half = [a if a != "8" else "4" for a in args]
    assert main([*half, "--quiet"]) == 0
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "16/16" in captured.err.replace("\r", "\n").strip().splitlines()[-1]
    assert "xor" in captured.out  # the summary table
    with ResultStore(db) as store:
        _assert_same_runs(store, local)


def _dies_once(marker_dir: str, problem, method, seeds, steps, threads):
    """gd's block of seeds 4, 5 kills its own worker process on its first attempt."""
    marker = Path(marker_dir) / f"{method.name}-{seeds[0]}"
    if method.name == "gd" and seeds[0] == 4 and not marker.exists():
        marker.touch()
        os._exit(1)  # as a worker lost to the OOM killer or a dead node
    return run_block(problem, method, seeds, steps, threads)


def test_a_killed_worker_loses_and_duplicates_nothing(cluster, local, tmp_path):
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()

    def block_fn(problem, method, seeds, steps, threads):
        return _dies_once(str(marker_dir), problem, method, seeds, steps, threads)

    written = []
    with ResultStore(tmp_path / "ray.db") as store:
        reports = sweep_ray(_jobs(), SEEDS, STEPS, store, batch_seeds=BLOCK, max_retries=2,
                            on_batch=written.append, block_fn=block_fn)
        # The block killed its worker once, and Ray ran it again.
        assert [p.name for p in marker_dir.iterdir()] == ["gd-4"]
        assert written == [BLOCK] * 8  # every block written once
        assert [(r.ran, r.skipped) for r in reports] == [(8, 0), (8, 0)]
        _assert_same_runs(store, local)


def test_a_failing_task_stops_the_sweep_and_keeps_the_written_blocks(cluster, tmp_path):
    problem, method = _jobs()[0]

    def block_fn(problem, method, seeds, steps, threads):
        if seeds[0] == 6:
            raise FloatingPointError("boom")
        return run_block(problem, method, seeds, steps, threads)

    with ResultStore(tmp_path / "ray.db") as store:
        with pytest.raises(RuntimeError, match=r"seeds 6\.\.7 failed.*boom.*rerun resumes"):
            sweep_ray([(problem, method)], SEEDS, STEPS, store, batch_seeds=BLOCK,
                      block_fn=block_fn)
        stored = store.done_seeds(problem, method, STEPS)
        assert 6 not in stored and 7 not in stored
        assert len(stored) % BLOCK == 0  # whole blocks only


def _created(store: ResultStore) -> dict[tuple[str, int], float]:
    """When each stored run was written."""
    return {(m, s): c for m, s, c in store.conn.execute("SELECT method, seed, created FROM runs")}


def test_an_interrupted_driver_keeps_finished_blocks_and_reruns_only_the_rest(
        cluster, local, tmp_path):
    jobs = _jobs()
    with ResultStore(tmp_path / "ray.db") as store:

        def stop(n: int) -> None:
            raise KeyboardInterrupt  # the driver dies right after its first write

        with pytest.raises(KeyboardInterrupt):
            sweep_ray(jobs, SEEDS, STEPS, store, batch_seeds=BLOCK, on_batch=stop)
        first = _created(store)
        assert len(first) == BLOCK  # exactly the block written, whole
        reports = sweep_ray(jobs, SEEDS, STEPS, store, batch_seeds=BLOCK)
        assert sum(r.skipped for r in reports) == BLOCK
        assert sum(r.ran for r in reports) == 2 * len(SEEDS) - BLOCK
        # The first block was kept, not written again.
        again = _created(store)
        assert {k: again[k] for k in first} == first
        _assert_same_runs(store, local)


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:x", "ray://:10001", "127.0.0.1:1"])
def test_an_address_where_nothing_answers_is_one_line_at_once(address):
    """Ray itself retries an unreachable address for minutes; bench says so at once."""
    with pytest.raises(UsageError, match=f"--ray {address}: (expected|nothing answers)"):
        _check_reachable(address, timeout=2.0)
