"""The SQLite store: round trip, unique key, resumable sweeps, and surviving SIGKILL."""

from __future__ import annotations

import dataclasses
import io
import math
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
from synaprune.bench.kinds import divergence_bound
from synaprune.bench.store import RESULT_COLUMNS, StoredRun
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


def test_diverged_run_is_stored_with_null_loss_or_the_loss_it_stopped_at(tmp_path: Path,
                                                                          quartic) -> None:
    results = run_seeds(quartic, get_method("gd:lr=1.0"), list(range(8)), 50)
    with ResultStore(tmp_path / "r.db") as store:
        store.write(quartic, get_method("gd:lr=1.0"), 50, results)
        raw = store.conn.execute("SELECT seed, final_loss FROM runs WHERE status = 'diverged'")
        for seed, loss in raw:  # NaN is NULL; a finite blow-up keeps its value
            start = quartic.loss(quartic.build_model(seed)).item()
            assert loss is None or loss > divergence_bound(quartic, start)
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


# The runs table as the first databases were written (before final_grad_norm).
_OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    problem TEXT NOT NULL,
    problem_name TEXT NOT NULL,
    problem_params TEXT NOT NULL,
    method TEXT NOT NULL,
    method_name TEXT NOT NULL,
    method_options TEXT NOT NULL,
    seed INTEGER NOT NULL,
    budget INTEGER NOT NULL,
    final_loss REAL,
    best_loss REAL,
    steps INTEGER NOT NULL,
    steps_to_success INTEGER,
    wall_time REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'diverged', 'budget')),
    success INTEGER NOT NULL,
    curve TEXT NOT NULL,
    params BLOB NOT NULL,
    created REAL NOT NULL,
    UNIQUE (problem, method, seed, budget)
)
"""


def _xor_results(seeds: list[int], steps: int = 30):
    problem, method = get_problem("xor"), get_method("gd:lr=2")
    return problem, method, run_seeds(problem, method, seeds, steps)


def _columns(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
    finally:
        conn.close()


def test_final_grad_norm_round_trip(tmp_path: Path) -> None:
    problem, method, results = _xor_results([0, 1, 2])
    assert "final_grad_norm" in RESULT_COLUMNS
    given = [0.125, None, results[2].final_grad_norm]
    results = [dataclasses.replace(r, final_grad_norm=g)
               for r, g in zip(results, given, strict=True)]
    with ResultStore(tmp_path / "r.db") as store:
        store.write(problem, method, 30, results)
        assert [r["final_grad_norm"] for r in store.rows()] == given
        raw = store.conn.execute("SELECT final_grad_norm FROM runs ORDER BY seed").fetchall()
        assert raw[1][0] is None  # unknown is NULL, not 0 or nan
    assert given[2] is not None and given[2] > 0  # the runner measures it


def test_get_run_by_id(tmp_path: Path) -> None:
    problem, method, results = _xor_results([3, 4])
    with ResultStore(tmp_path / "r.db") as store:
        store.write(problem, method, 30, results)
        rows = {r["seed"]: r for r in store.rows()}
        run = store.get_run(rows[4]["id"])
    assert isinstance(run, StoredRun)
    res = results[1]
    assert (run.id, run.problem, run.method, run.seed, run.budget) == (
        rows[4]["id"], problem.spec, method.spec, 4, 30)
    assert (run.status, run.steps, run.final_loss) == (res.status, res.steps, res.final_loss)
    assert run.final_grad_norm == res.final_grad_norm
    assert run.params.keys() == res.params.keys()
    assert all(torch.equal(run.params[k], res.params[k]) for k in run.params)
    # the parameters load into the problem's model, strictly
    model = problem.build_model(run.seed)
    model.load_state_dict(run.params, strict=True)
    assert problem.loss(model).item() == pytest.approx(res.final_loss, rel=1e-12)


def test_get_run_unknown_id_is_one_clear_line(tmp_path: Path) -> None:
    problem, method, results = _xor_results([0])
    with ResultStore(tmp_path / "r.db") as store:
        store.write(problem, method, 30, results)
        with pytest.raises(KeyError) as info:
            store.get_run(999)
        message = info.value.args[0]
        assert "No run with id 999" in message and "holds 1 runs" in message
        assert "synaprune results" in message and "--runs" in message and "\n" not in message
        with pytest.raises(TypeError, match="expected an int"):
            store.get_run("1")  # type: ignore[arg-type]


def test_database_without_final_grad_norm_is_migrated(tmp_path: Path) -> None:
    """A database made before the column existed: read-only it reads as NULL and the file is
    left alone; opened for writing the column is added, old rows NULL, new rows filled."""
    db = tmp_path / "old.db"
    problem, method, old = _xor_results([0, 1])
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(_OLD_SCHEMA)
        for r in old:
            conn.execute(
                "INSERT INTO runs (problem, problem_name, problem_params, method, method_name, "
                "method_options, seed, budget, final_loss, best_loss, steps, steps_to_success, "
                "wall_time, status, success, curve, params, created) "
                "VALUES (?, ?, '{}', ?, ?, '{}', ?, 30, ?, ?, ?, ?, 0.0, ?, ?, '[]', ?, 0.0)",
                (problem.spec, problem.name, method.spec, method.name, r.seed, r.final_loss,
                 r.best_loss, r.steps, r.steps_to_success, r.status, int(r.success),
                 _params_bytes(r.params)))
    conn.close()
    assert "final_grad_norm" not in _columns(db)

    with ResultStore(db, readonly=True) as store:
        rows = store.rows()
        assert [r["final_grad_norm"] for r in rows] == [None, None]
        run = store.get_run(rows[0]["id"])
        assert run.final_grad_norm is None and run.final_loss == old[0].final_loss
    assert "final_grad_norm" not in _columns(db)  # read-only: untouched

    with ResultStore(db) as store:
        assert "final_grad_norm" in _columns(db)
        assert [r["final_grad_norm"] for r in store.rows()] == [None, None]
        _, _, new = _xor_results([2, 3])
        assert store.write(problem, method, 30, new) == 2
        norms = {r["seed"]: r["final_grad_norm"] for r in store.rows()}
    assert norms[0] is None and norms[1] is None
    assert norms[2] == new[0].final_grad_norm and norms[3] == new[1].final_grad_norm
    assert all(math.isfinite(norms[s]) for s in (2, 3))
    with ResultStore(db) as store:  # opening again changes nothing
        assert store.count() == 4
    assert _columns(db).count("final_grad_norm") == 1


_OUTCOME_COLUMNS = ("kind", "min_eig", "saddle_index", "cost")


def test_outcome_columns_round_trip_and_null_is_not_recorded(tmp_path: Path) -> None:
    """kind, min_eig, saddle_index and cost are stored as given; None stays NULL (not 0)."""
    problem, method, results = _xor_results([0, 1])
    assert set(_OUTCOME_COLUMNS) <= set(RESULT_COLUMNS)
    assert results[1].kind is not None and results[1].cost == 30.0  # the runner sets them
    results = [dataclasses.replace(results[0], kind="saddle", min_eig=-0.25, saddle_index=2,
                                   cost=31.5),
               dataclasses.replace(results[1], kind=None, min_eig=None, saddle_index=None,
                                   cost=None)]
    with ResultStore(tmp_path / "r.db") as store:
        store.write(problem, method, 30, results)
        rows = store.rows()
        assert [[r[c] for c in _OUTCOME_COLUMNS] for r in rows] == [
            ["saddle", -0.25, 2, 31.5], [None, None, None, None]]
        run = store.get_run(rows[0]["id"])
        assert (run.kind, run.min_eig, run.saddle_index, run.cost) == ("saddle", -0.25, 2, 31.5)
        raw = store.conn.execute("SELECT kind, min_eig, saddle_index, cost FROM runs "
                                 "WHERE seed = 1").fetchone()
        assert tuple(raw) == (None, None, None, None)


def test_old_database_without_outcome_columns_reads_not_recorded(tmp_path: Path) -> None:
    """Before kind/min_eig/saddle_index/cost: read-only they read as None and the file is
    untouched; for writing they are added once."""
    db = tmp_path / "old.db"
    problem, method, old = _xor_results([0])
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(_OLD_SCHEMA)
        r = old[0]
        conn.execute(
            "INSERT INTO runs (problem, problem_name, problem_params, method, method_name, "
            "method_options, seed, budget, final_loss, best_loss, steps, steps_to_success, "
            "wall_time, status, success, curve, params, created) "
            "VALUES (?, ?, '{}', ?, ?, '{}', ?, 30, ?, ?, ?, ?, 0.0, ?, ?, '[]', ?, 0.0)",
            (problem.spec, problem.name, method.spec, method.name, r.seed, r.final_loss,
             r.best_loss, r.steps, r.steps_to_success, r.status, int(r.success),
             _params_bytes(r.params)))
    conn.close()
    with ResultStore(db, readonly=True) as store:
        row = store.rows()[0]
        assert [row[c] for c in _OUTCOME_COLUMNS] == [None] * 4
        run = store.get_run(row["id"])
        assert (run.kind, run.min_eig, run.saddle_index, run.cost) == (None,) * 4
    assert not set(_OUTCOME_COLUMNS) & set(_columns(db))
    with ResultStore(db):
        pass
    with ResultStore(db):
        pass
    assert all(_columns(db).count(c) == 1 for c in _OUTCOME_COLUMNS)


def test_rows_filter_by_method(tmp_path: Path) -> None:
    problem = get_problem("xor")
    with ResultStore(tmp_path / "r.db") as store:
        for spec in ("gd:lr=2", "adam:lr=0.05"):
            method = get_method(spec)
            store.write(problem, method, 10, run_seeds(problem, method, [0, 1], 10))
        assert {r["method_name"] for r in store.rows(methods=["gd"])} == {"gd"}
        adam = get_method("adam:lr=0.05").spec
        assert [r["seed"] for r in store.rows(["xor"], [adam])] == [0, 1]
        assert len(store.rows(methods=["gd", "adam"])) == 4
        assert store.rows(["teacher-student"], ["gd"]) == []


def _params_bytes(params: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(params, buffer)
    return buffer.getvalue()
