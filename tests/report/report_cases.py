"""Shared by the report's tests: the problems of the lab database, the columns later stores add."""

from __future__ import annotations

import sqlite3
from pathlib import Path

XOR = "xor"
TS = "teacher-student:k=3"


def add_contract_columns(db: Path) -> dict[int, tuple[str, float]]:
    """The columns the store will add (CONTRACT.md), filled as a store would: kind from the
    status (spurious for even seeds, saddle for odd), cost = 2 gradients a step for
    synaprune-b, 1 for gd."""
    out = {}
    with sqlite3.connect(db) as conn:
        for column, sql_type in (("kind", "TEXT"), ("min_eig", "REAL"),
                                 ("saddle_index", "INTEGER"), ("cost", "REAL")):
            conn.execute(f"ALTER TABLE runs ADD COLUMN {column} {sql_type}")
        rows = conn.execute("SELECT id, status, seed, steps, method_name FROM runs").fetchall()
        for run_id, status, seed, steps, method in rows:
            kind = ("global" if status == "ok" else "diverged" if status == "diverged"
                    else "spurious" if seed % 2 == 0 else "saddle")
            cost = steps * (2.0 if method == "synaprune-b" else 1.0)
            conn.execute("UPDATE runs SET kind=?, cost=?, min_eig=?, saddle_index=? WHERE id=?",
                         (kind, cost, 0.01 if kind == "spurious" else -0.5,
                          0 if kind == "spurious" else 1, run_id))
            out[run_id] = (kind, cost)
    return out


