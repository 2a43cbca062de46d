"""``synaprune bench --ray``: blocks of seeds as Ray tasks on a local 2-CPU cluster started here.

Every test compares the Ray sweep's store with a local sweep's, run for run: every column but
the row id, the time of writing and the wall time, and the final parameters bit for bit (the
same blocks of the same seeds through the same code on one thread: equality, not closeness, is
the claim). One cluster serves the whole module (Ray takes seconds to start).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
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
    before = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray phones home by default; not from here
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning",
             _node_ip_address="127.0.0.1")  # the cluster's traffic stays on the loopback
    # The workers cannot import this test file: ship its functions (block_fn below) by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()
    if before is None:
        os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
    else:
        os.environ["RAY_USAGE_STATS_ENABLED"] = before


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


def test_a_driver_killed_mid_sweep_loses_no_block_and_a_rerun_duplicates_none(cluster, tmp_path):
    """``synaprune bench --ray ADDRESS`` in its own process, joined to this module's cluster,
    SIGKILLed right after its first block reached the database; a rerun completes the sweep."""
    db = tmp_path / "killed.db"
    seeds, block, steps = 16, 2, 100
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "synaprune", "bench", "--problem", PROBLEM, "--method",
           "gd:lr=0.1", "--seeds", str(seeds), "--steps", str(steps), "--batch-seeds",
           str(block), "--db", str(db), "--ray", address, "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    written = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                with sqlite3.connect(db, timeout=30) as conn:
                    try:
                        written = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
                    except sqlite3.OperationalError:  # the table is not created yet
                        written = 0
                if written:
                    break
            time.sleep(0.05)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=60)
    assert written, f"the driver wrote nothing before it ended: {err.decode()[-2000:]}"
    problem, method = get_problem(PROBLEM), get_method("gd:lr=0.1", problem=PROBLEM)
    with ResultStore(db) as store:
        before = _created(store)
        assert 0 < len(before) < seeds, "the kill must land mid-sweep"
        done = sorted(s for _, s in before)
        assert len(done) % block == 0 and all(done[i] + 1 == done[i + 1]
                                              for i in range(0, len(done), block))  # whole blocks
        (report,) = sweep_ray([(problem, method)], range(seeds), steps, store,
                              batch_seeds=block)
        assert (report.skipped, report.ran) == (len(before), seeds - len(before))
        after = _created(store)
        assert sorted(s for _, s in after) == list(range(seeds))  # each seed once
        assert {k: after[k] for k in before} == before  # the finished blocks were kept
