"""The SQLite store: round trip, unique key, resumable sweeps, and surviving SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from synaprune.bench import ResultStore, get_method, run_seeds, sweep
from synaprune.problems import get_problem


def test_round_trip_and_unique_key(tmp_path: Path) -> None:
    problem, method = get_problem("teacher-student:k=4"), get_method("adam:lr=0.05")
    results = run_seeds(problem, method, [0, 1, 2], 110)
    store = ResultStore(tmp_path / "r.db")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.write(problem, method, 110, results) == 3
    assert store.write(problem, method, 110, results) == 0  # same key: ignored
    assert store.count() == 3
    assert store.done_seeds(problem, method, 110) == {0, 1, 2}
    assert store.done_seeds(problem, method, 111) == set()
    rows = store.rows()
    assert [r["seed"] for r in rows] == [0, 1, 2]
    for row, res in zip(rows, results, strict=True):
        assert row["problem"] == problem.spec and row["method"] == method.spec
        assert row["problem_params"] == problem.options
        assert row["method_options"]["betas"] == [0.9, 0.999]
        assert (row["status"], row["success"], row["steps"]) == (res.status, res.success,
                                                                 res.steps)
        assert row["final_loss"] == res.final_loss and row["best_loss"] == res.best_loss
        assert row["steps_to_success"] == res.steps_to_success
        assert row["curve"] == res.curve
        params = store.load_params(row["id"])
        assert params.keys() == res.params.keys()
        assert all(torch.equal(params[k], res.params[k]) for k in params)
    with pytest.raises(KeyError):
        store.load_params(10_000)
    assert store.rows(["xor"]) == [] and len(store.rows(["teacher-student"])) == 3
    assert len(store.rows([problem.spec])) == 3
    store.close()


def test_diverged_run_is_stored_with_null_loss(tmp_path: Path, quartic) -> None:
    results = run_seeds(quartic, get_method("gd:lr=1.0"), list(range(8)), 50)
    with ResultStore(tmp_path / "r.db") as store:
        store.write(quartic, get_method("gd:lr=1.0"), 50, results)
        raw = store.conn.execute("SELECT final_loss FROM runs WHERE status = 'diverged'")
        assert all(v[0] is None or v[0] == float("inf") for v in raw)
        assert any(r["status"] == "diverged" for r in store.rows())


def test_sweep_skips_finished_runs(tmp_path: Path) -> None:
    problem, method = get_problem("xor"), get_method("gd:lr=2")
    with ResultStore(tmp_path / "r.db") as store:
        first = sweep(problem, method, range(5), 40, store, batch_seeds=2)
        assert (first.ran, first.skipped) == (5, 0)
        second = sweep(problem, method, range(8), 40, store, batch_seeds=3)
        assert (second.requested, second.ran, second.skipped) == (8, 3, 5)
        assert sorted(r["seed"] for r in store.rows()) == list(range(8))
        with pytest.raises(ValueError, match="batch_seeds"):
            sweep(problem, method, range(8), 40, store, batch_seeds=0)


def test_readonly_open_of_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ResultStore(tmp_path / "missing.db", readonly=True)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        ResultStore(junk, readonly=True)


def _rows(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT seed, status, steps, final_loss, best_loss, curve FROM runs ORDER BY seed"
        ).fetchall()
    finally:
        conn.close()


def test_sigkill_mid_sweep_then_resume(tmp_path: Path) -> None:
    """A real sweep process killed with SIGKILL loses at most its batch in flight; resuming
    gives every seed once, with the same results as an uninterrupted sweep."""
    db = tmp_path / "killed.db"
    args = ["--problem", "xor:hidden=3", "--method", "gd:lr=0.5", "--seeds", "24",
            "--steps", "1500", "--batch-seeds", "3", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "synaprune", "bench", "--db", str(db), *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 40
        count = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    count = len(_rows(db))
                except sqlite3.Error:
                    count = 0
                if count >= 3:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, f"sweep ended before it was killed: {proc.stderr.read()}"
        assert count >= 3
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = _rows(db)
    assert 3 <= len(partial) < 24 and len(partial) % 3 == 0  # whole batches only

    problem, method = get_problem("xor:hidden=3"), get_method("gd:lr=0.5")
    with ResultStore(db) as store:
        report = sweep(problem, method, range(24), 1500, store, batch_seeds=12)
    assert report.skipped == len(partial) and report.ran == 24 - len(partial)
    resumed = _rows(db)
    assert [r[0] for r in resumed] == list(range(24))  # every seed once, no duplicates

    with ResultStore(tmp_path / "clean.db") as store:
        sweep(problem, method, range(24), 1500, store, batch_seeds=24)
    clean = _rows(tmp_path / "clean.db")
    for a, b in zip(resumed, clean, strict=True):
        assert a[:3] == b[:3]  # seed, status, steps
        assert a[3] == pytest.approx(b[3], abs=1e-12)
        assert a[4] == pytest.approx(b[4], abs=1e-12)
    with ResultStore(db) as got, ResultStore(tmp_path / "clean.db") as want:
        for ra, rb in zip(got.rows(), want.rows(), strict=True):
            pa, pb = got.load_params(ra["id"]), want.load_params(rb["id"])
            assert max((pa[k] - pb[k]).abs().max().item() for k in pb) <= 1e-12
