"""SQLite store of benchmark runs: one row per (problem spec, method spec, seed, budget).

The database is in WAL mode. Rows of one batch are written in one transaction, so a process
killed at any moment loses at most the batch in flight and never leaves half-written rows;
the UNIQUE key (problem spec, method spec, seed, budget) makes reruns skip finished runs and
rules out duplicates. Final parameters are stored as ``torch.save`` bytes of a dict of tensors
and are only ever loaded back with ``torch.load(..., weights_only=True)``.

Opening for writing makes a real write (rewriting the header's ``user_version``), so that a
file or a folder that cannot be written is refused when the store is opened, not after the
first batch has been trained: WAL needs to create ``<db>-wal`` and ``<db>-shm`` beside the file.
Opening read-only (``mode=ro``) works in a folder that cannot be written too: there, without
those two files, the database is opened ``immutable`` (no locks, no shared memory); that is
only done when no ``-wal`` or ``-journal`` file with content lies beside it, since such a file
may hold committed rows that an immutable reader would silently miss.

Schema changes: ``final_grad_norm``, then ``kind``, ``min_eig``, ``saddle_index``, ``cost`` and
``stop_rule`` were added after the first databases were written (:data:`_ADDED_COLUMNS`).
Opening an older database for writing adds them (``ALTER TABLE``, NULL for the old rows);
opening it read-only leaves the file alone and reads them as NULL. NULL means "not recorded",
never a value: readers say so (``results`` shows ``not recorded``) instead of counting such a
run as any kind.
"""

from __future__ import annotations

import io
import json
import math
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from synaprune.bench.methods import Method
from synaprune.bench.runner import RunResult
from synaprune.problems import Problem

__all__ = ["RESULT_COLUMNS", "ResultStore", "StoredRun"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    problem TEXT NOT NULL,            -- canonical problem spec
    problem_name TEXT NOT NULL,
    problem_params TEXT NOT NULL,     -- JSON of the resolved options
    method TEXT NOT NULL,             -- canonical method spec
    method_name TEXT NOT NULL,
    method_options TEXT NOT NULL,     -- JSON of the resolved options
    seed INTEGER NOT NULL,
    budget INTEGER NOT NULL,          -- maximum optimizer steps
    final_loss REAL,                  -- NULL when NaN
    best_loss REAL,
    steps INTEGER NOT NULL,
    steps_to_success INTEGER,
    wall_time REAL NOT NULL,          -- seconds per run
    status TEXT NOT NULL CHECK (status IN ('ok', 'diverged', 'budget')),
    success INTEGER NOT NULL,
    curve TEXT NOT NULL,              -- JSON [[step, loss, grad_norm], ...]
    params BLOB NOT NULL,             -- torch.save of {name: tensor}
    created REAL NOT NULL,
    final_grad_norm REAL,             -- ||grad L|| at the final parameters; NULL when unknown
    kind TEXT,                        -- how the run ended (KINDS); NULL when not recorded
    min_eig REAL,                     -- smallest Hessian eigenvalue at the end; NULL: not computed
    saddle_index INTEGER,             -- negative Hessian eigenvalues found; NULL if not computed
    cost REAL,                        -- cost in gradient-equivalents; NULL when not recorded
    stop_rule TEXT,                   -- stopping rule and gradient tolerance; NULL: the default
    UNIQUE (problem, method, seed, budget)
)
"""

RESULT_COLUMNS = (
    "problem", "problem_name", "problem_params", "method", "method_name", "method_options",
    "seed", "budget", "final_loss", "best_loss", "steps", "steps_to_success", "wall_time",
    "status", "success", "curve", "final_grad_norm", "kind", "min_eig", "saddle_index", "cost",
    "stop_rule",
)

# Columns added after the first databases were written: name -> SQL type (NULL for old rows).
_ADDED_COLUMNS = {"final_grad_norm": "REAL", "kind": "TEXT", "min_eig": "REAL",
                  "saddle_index": "INTEGER", "cost": "REAL", "stop_rule": "TEXT"}


def _params_to_bytes(params: dict[str, Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in params.items()}, buffer)
    return buffer.getvalue()


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """Open ``path`` for reading only, also in a folder that cannot be written.

    Raises:
        FileNotFoundError: If there is no such file.
        sqlite3.Error: If it cannot be read, is not a results database, or lies in a folder
            that cannot be written next to a ``-wal`` or ``-journal`` file with content.
    """
    if not path.is_file():
        raise FileNotFoundError(f"No such database: {path}")
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        conn.execute("SELECT count(*) FROM runs").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        # A WAL database's reader needs <db>-shm (and <db>-wal), created if missing; in a
        # folder that cannot be written that fails, with "attempt to write a readonly
        # database" (SQLITE_READONLY_DIRECTORY) or "unable to open database file".
        # (sqlite_errorname is Python >= 3.11; the messages are SQLite's own for those codes.)
        if (getattr(exc, "sqlite_errorname", "") not in ("SQLITE_READONLY_DIRECTORY",
                                                          "SQLITE_CANTOPEN")
                and str(exc) not in ("attempt to write a readonly database",
                                     "unable to open database file")):
            raise
        pending = [f"{path}{s}" for s in ("-wal", "-journal")
                   if Path(f"{path}{s}").is_file() and Path(f"{path}{s}").stat().st_size > 0]
        if pending:
            raise sqlite3.OperationalError(
                f"{exc}: the folder cannot be written and {pending[0]} may hold rows not yet "
                f"in the database; open it once where its folder can be written") from None
    # Immutable: no locks and no -shm. Safe here: no writer can be at work (a WAL writer has
    # a -wal file, and none with content exists), and no journal is left to replay.
    conn = sqlite3.connect(uri + "&immutable=1", uri=True)
    try:
        conn.execute("SELECT count(*) FROM runs").fetchone()
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _real(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


@dataclass(frozen=True)
class StoredRun:
    """One stored run, as returned by :meth:`ResultStore.get_run`.

    Attributes:
        id: The row's id.
        problem: Canonical problem spec (``get_problem(problem)`` rebuilds the problem).
        method: Canonical method spec.
        seed: Model seed (``get_problem(problem).build_model(seed)`` is the initial model).
        budget: Step budget of the run.
        status: ``"ok"``, ``"diverged"`` or ``"budget"``.
        steps: Optimizer steps taken.
        final_loss: Training loss at the end (nan when it was NaN or infinite).
        final_grad_norm: Gradient norm at the final parameters; None when unknown (diverged,
            or a database written before the column existed).
        kind: How the run ended (one of :data:`synaprune.bench.kinds.KINDS`); None when not
            recorded.
        min_eig: Smallest Hessian eigenvalue at the final parameters; None if not computed.
        saddle_index: Number of negative Hessian eigenvalues found; None if not computed.
        cost: Cost of the run in gradient-equivalents; None when not recorded.
        params: Final parameters by name, loaded with ``torch.load(..., weights_only=True)``.
    """

    id: int
    problem: str
    method: str
    seed: int
    budget: int
    status: str
    steps: int
    final_loss: float
    final_grad_norm: float | None
    params: dict[str, Tensor] = field(repr=False)
    kind: str | None = None
    min_eig: float | None = None
    saddle_index: int | None = None
    cost: float | None = None


class ResultStore:
    """A results database (SQLite, WAL mode).

    Args:
        path: Database file; created with its table when missing (unless ``readonly``).
        readonly: Open an existing database for reading only.

    Raises:
        sqlite3.Error: If the file cannot be opened or is not a results database; without
            ``readonly``, also if the file or its folder cannot be written (checked by a real
            write when opening, before anything is trained).
        FileNotFoundError: If ``readonly`` and the file does not exist.

    Example:
        >>> store = ResultStore(":memory:")
        >>> store.count()
        0
    """

    def __init__(self, path: str | Path = "results.db", *, readonly: bool = False) -> None:
        self.path = str(path)
        if readonly:
            self.conn = _connect_readonly(Path(self.path))
        else:
            self.conn = sqlite3.connect(self.path, timeout=30.0)
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                with self.conn:
                    self.conn.execute(_SCHEMA)
                self._add_missing_columns()
                # A real write: a read-only file opens and even takes the write lock
                # (BEGIN IMMEDIATE) without complaint; only writing a page fails.
                version = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
                with self.conn:
                    self.conn.execute(f"PRAGMA user_version = {version}")
            except sqlite3.Error:
                self.conn.close()
                raise
        self.conn.row_factory = sqlite3.Row
        # Columns this database lacks (only possible read-only): read as NULL.
        self._missing = set(_ADDED_COLUMNS) - self._columns()

    def _columns(self) -> set[str]:
        return {str(r[1]) for r in self.conn.execute("PRAGMA table_info(runs)")}

    def _add_missing_columns(self) -> None:
        """Add the columns of :data:`_ADDED_COLUMNS` that an older database lacks."""
        for name, sql_type in _ADDED_COLUMNS.items():
            if name in self._columns():
                continue
            try:
                with self.conn:
                    self.conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {sql_type}")
            except sqlite3.OperationalError:
                if name not in self._columns():  # not another process adding it meanwhile
                    raise

    def _select(self, columns: Iterable[str]) -> str:
        """Comma-separated column list, a column this database lacks read as NULL."""
        return ", ".join(f"NULL AS {c}" if c in self._missing else c for c in columns)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count(self) -> int:
        """Number of stored runs."""
        return int(self.conn.execute("SELECT count(*) FROM runs").fetchone()[0])

    def done_seeds(self, problem: Problem, method: Method, budget: int) -> set[int]:
        """Seeds already stored for this (problem, method, budget).

        Args:
            problem: The problem (its canonical spec is the key).
            method: The method (its canonical spec is the key).
            budget: Step budget.

        Returns:
            The set of finished seeds.
        """
        rows = self.conn.execute(
            "SELECT seed FROM runs WHERE problem = ? AND method = ? AND budget = ?",
            (problem.spec, method.spec, budget),
        )
        return {int(r[0]) for r in rows}

    def stop_rules(self, problem: Problem, method: Method, budget: int) -> set[str | None]:
        """The stopping rules (:func:`synaprune.bench.sweep.stop_rule`) of the stored runs of
        this (problem, method, budget); None is the default rule (run to the budget, the
        default gradient tolerance) and every run written before the column existed."""
        rows = self.conn.execute(
            f"SELECT DISTINCT {self._select(['stop_rule'])} FROM runs "
            "WHERE problem = ? AND method = ? AND budget = ?",
            (problem.spec, method.spec, budget))
        return {r[0] for r in rows}

    def write(self, problem: Problem, method: Method, budget: int,
              results: Iterable[RunResult], stop_rule: str | None = None) -> int:
        """Write the runs of one batch in a single transaction; already stored runs are kept.

        Args:
            problem: The problem.
            method: The method.
            budget: Step budget of the runs.
            results: The batch's results.
            stop_rule: The runs' stopping rule (None: the default).

        Returns:
            Number of rows inserted.
        """
        now = time.time()
        problem_params = json.dumps(problem.options, sort_keys=True)
        method_options = json.dumps(method.options, sort_keys=True)
        rows = [
            (problem.spec, problem.name, problem_params, method.spec, method.name,
             method_options, r.seed, budget, _real(r.final_loss), _real(r.best_loss), r.steps,
             r.steps_to_success, r.wall_time, r.status, int(r.success),
             json.dumps(r.curve), _params_to_bytes(r.params), now, _real(r.final_grad_norm),
             r.kind, _real(r.min_eig), r.saddle_index, _real(r.cost), stop_rule)
            for r in results
        ]
        with self.conn:
            cursor = self.conn.executemany(
                "INSERT OR IGNORE INTO runs (problem, problem_name, problem_params, method, "
                "method_name, method_options, seed, budget, final_loss, best_loss, steps, "
                "steps_to_success, wall_time, status, success, curve, params, created, "
                "final_grad_norm, kind, min_eig, saddle_index, cost, stop_rule) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return cursor.rowcount

    def rows(self, problems: Sequence[str] | None = None,
             methods: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Stored runs as dicts (without parameters), ordered by problem, method, seed.

        Args:
            problems: Keep only these problems: a canonical spec, or a bare name (no ``:``)
                matching every spec of that problem. None keeps all.
            methods: Keep only these methods, matched the same way (canonical spec or bare
                name). None keeps all.

        Returns:
            One dict per run with the keys of :data:`RESULT_COLUMNS` plus ``id``;
            ``problem_params``, ``method_options`` and ``curve`` decoded from JSON;
            ``success`` a bool; a NULL ``final_loss`` (NaN) as ``nan``; a NULL
            ``final_grad_norm``, ``kind``, ``min_eig``, ``saddle_index`` or ``cost`` (not
            recorded: an older database or row, or not computed) as None.
        """
        query = f"SELECT id, {self._select(RESULT_COLUMNS)} FROM runs"
        args: list[str] = []
        where = []
        for specs, column in ((problems, "problem"), (methods, "method")):
            if specs:
                clauses = []
                for spec in specs:
                    clauses.append(f"{column} = ?" if ":" in spec else f"{column}_name = ?")
                    args.append(spec)
                where.append("(" + " OR ".join(clauses) + ")")
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY problem, method, budget, seed"
        out = []
        for row in self.conn.execute(query, args):
            d = dict(row)
            for key in ("problem_params", "method_options", "curve"):
                d[key] = json.loads(d[key])
            d["success"] = bool(d["success"])
            for key in ("final_loss", "best_loss"):
                if d[key] is None:
                    d[key] = math.nan
            out.append(d)
        return out

    def load_params(self, run_id: int) -> dict[str, Tensor]:
        """Final parameters of one run, loaded with ``torch.load(weights_only=True)``.

        Args:
            run_id: The row's ``id``.

        Returns:
            Parameter tensors by name.

        Raises:
            KeyError: If there is no such run.
        """
        row = self.conn.execute("SELECT params FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"No run with id {run_id}")
        return torch.load(io.BytesIO(row[0]), weights_only=True)

    def get_run(self, run_id: int) -> StoredRun:
        """One run by id: its problem and method specs, seed, status, final loss and
        parameters (``torch.load(..., weights_only=True)``).

        Args:
            run_id: The row's ``id`` (listed by ``synaprune results --runs``).

        Returns:
            The :class:`StoredRun`.

        Raises:
            KeyError: If there is no run with this id (one-line message in ``args[0]``).
            TypeError: If ``run_id`` is not an integer.

        Example:
            >>> store = ResultStore(":memory:")
            >>> try:
            ...     store.get_run(1)
            ... except KeyError as exc:
            ...     print(exc.args[0].split(";")[0])
            No run with id 1 in :memory: (it holds 0 runs)
        """
        if isinstance(run_id, bool) or not isinstance(run_id, int):
            raise TypeError(f"Invalid run id {run_id!r}; expected an int")
        columns = ("id", "problem", "method", "seed", "budget", "status", "steps", "final_loss",
                   "final_grad_norm", "params", "kind", "min_eig", "saddle_index", "cost")
        row = self.conn.execute(f"SELECT {self._select(columns)} FROM runs WHERE id = ?",
                                (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"No run with id {run_id} in {self.path} (it holds {self.count()} "
                           f"runs); list the ids with: synaprune results --db {self.path} --runs")
        params = torch.load(io.BytesIO(row["params"]), weights_only=True)
        return StoredRun(
            id=int(row["id"]), problem=row["problem"], method=row["method"],
            seed=int(row["seed"]), budget=int(row["budget"]), status=row["status"],
            steps=int(row["steps"]),
            final_loss=math.nan if row["final_loss"] is None else float(row["final_loss"]),
            final_grad_norm=(None if row["final_grad_norm"] is None
                             else float(row["final_grad_norm"])),
            params=params, kind=row["kind"],
            min_eig=None if row["min_eig"] is None else float(row["min_eig"]),
            saddle_index=None if row["saddle_index"] is None else int(row["saddle_index"]),
            cost=None if row["cost"] is None else float(row["cost"]),
        )
