"""The runs a report shows, read from a results database, with what the database records.

Columns that later versions of the store add (the failure kind of a run, the Hessian's smallest
eigenvalue and saddle index at its end, its cost) are read when the database has them and are
None otherwise; :attr:`RunTable.recorded` says which are present, so that the report can say
"not recorded in this database" instead of showing a number that was never measured.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synaprune.bench.store import ResultStore
from synaprune.errors import UsageError

__all__ = ["CONTRACT_COLUMNS", "FAILURE_KINDS", "KIND_LABELS", "RunTable", "load_runs"]

# Columns of the store added after the first databases (NULL for older rows): the contract
# between the store and its readers (the kind of point a failed run ended at, the smallest
# Hessian eigenvalue and the number of negative ones there, the run's cost in gradients).
CONTRACT_COLUMNS = ("kind", "min_eig", "saddle_index", "cost")

# The store's kinds, in the order figures stack them, and the words users read.
KIND_LABELS = {
    "global": "global",
    "spurious": "spurious minimum",
    "saddle": "saddle",
    "moving": "still moving",
    "unstable": "unstable",
    "diverged": "diverged",
}
FAILURE_KINDS = tuple(k for k in KIND_LABELS if k != "global")


@dataclass
class RunTable:
    """Stored runs and what their database records.

    Attributes:
        db: The database's path, as given.
        rows: One dict per run, as :meth:`ResultStore.rows` (ordered by problem, method,
            budget, seed), each also with the keys of :data:`CONTRACT_COLUMNS` (None where not
            recorded).
        recorded: The columns of :data:`CONTRACT_COLUMNS` this database has.
        total: Runs in the whole database (before any problem filter).
        last_created: Unix time of the newest run (None for an empty database): the data's
            own date, which a report can state without changing between two builds.
    """

    db: str
    rows: list[dict[str, Any]]
    recorded: frozenset[str]
    total: int
    last_created: float | None = None
    problems: list[str] = field(default_factory=list)


def _not_lab(db: str, detail: str) -> UsageError:
    return UsageError(f"{db} is not a results database of synaprune bench ({detail}); write "
                      f"one with: synaprune bench --db {db} ...")


def load_runs(db: str | Path, problems: Sequence[str] | None = None) -> RunTable:
    """Read the runs of ``db`` (read-only), optionally only some problems.

    Args:
        db: Results database written by ``synaprune bench``.
        problems: Canonical problem specs, or bare names matching every spec of that
            problem, as :meth:`ResultStore.rows` takes them; None keeps all.

    Returns:
        A :class:`RunTable`.

    Raises:
        UsageError: One line, for a missing or unreadable file, or a file that is not a
            results database (no ``runs`` table, or one without the lab's columns).
    """
    db = str(db)
    try:
        store = ResultStore(db, readonly=True)
    except FileNotFoundError:
        raise UsageError(f"cannot read database '{db}': no such file") from None
    except (sqlite3.Error, OSError) as exc:
        if "no such table" in str(exc) or "not a database" in str(exc):
            raise _not_lab(db, str(exc)) from None
        raise UsageError(f"cannot read database '{db}': {exc}") from None
    try:
        try:
            rows = store.rows(list(problems) if problems else None)
            columns = {str(r[1]) for r in store.conn.execute("PRAGMA table_info(runs)")}
            total = store.count()
            newest = store.conn.execute("SELECT max(created) FROM runs").fetchone()[0]
            recorded = frozenset(c for c in CONTRACT_COLUMNS if c in columns)
        except (sqlite3.Error, KeyError, ValueError) as exc:
            raise _not_lab(db, f"{type(exc).__name__}: {exc}") from None
    finally:
        store.close()
    for row in rows:
        for column in CONTRACT_COLUMNS:
            row.setdefault(column, None)
        cost = row["cost"]
        if cost is not None and not (isinstance(cost, (int, float)) and math.isfinite(cost)):
            row["cost"] = None
    return RunTable(db=db, rows=rows, recorded=recorded, total=total,
                    last_created=None if newest is None else float(newest),
                    problems=sorted({r["problem"] for r in rows}))
