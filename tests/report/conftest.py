"""Real results databases for the report's tests (built once per session): one as the store
writes it now, and the same runs as an older store wrote them (without the columns added
since: failure kinds, eigenvalues, cost, stopping rule)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from report_cases import TS, XOR

from synaprune.bench import get_method
from synaprune.bench.store import ResultStore
from synaprune.bench.sweep import sweep
from synaprune.problems import get_problem


@pytest.fixture(scope="session")
def current_lab_db(tmp_path_factory) -> Path:
    """A real results database as the store writes it now: xor (gd gets stuck on some seeds;
    synaprune-b) and an exact teacher-student problem, which cannot be diagnosed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("lab") / "results.db"
    try:
        with ResultStore(path) as store:
            xor = get_problem(XOR)
            for spec in ("gd:lr=2", "synaprune-b"):
                sweep(xor, get_method(spec, problem="xor"), range(8), 300, store)
            ts = get_problem(TS)
            sweep(ts, get_method("gd:lr=0.5"), range(6), 150, store)
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.fixture(scope="session")
def lab_db(current_lab_db, tmp_path_factory) -> Path:
    """:func:`current_lab_db` with the columns added after the first stores dropped."""
    path = tmp_path_factory.mktemp("old-lab") / "results.db"
    shutil.copy(current_lab_db, path)
    conn = sqlite3.connect(path)
    try:
        with conn:
            for column in ("kind", "min_eig", "saddle_index", "cost", "stop_rule"):
                conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    finally:
        conn.close()  # checkpoints the write-ahead log, so that a copy of the file has it all
    return path
