"""Running an experiment: cells stored as they finish, outputs replaced atomically.

An experiment module (see the package docstring for its contract) lists its cells; each cell's
result is stored in ``DIR/NAME.db`` (SQLite, one transaction per cell) under the canonical JSON
of the cell, the module's ``VERSION`` and the mode (quick or full). A rerun computes only the
cells not stored yet. The CSV (one row per cell) and the PNG are written to temporary files in
``DIR`` and renamed over the old ones only when both are complete, so a failure leaves the
previous pair intact.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["ExperimentResult", "StoredExperiment", "run_experiment", "stored_experiment"]

_PLAIN = (str, int, float, bool)


@dataclass(frozen=True)
class ExperimentResult:
    """What :func:`run_experiment` returns.

    Attributes:
        name: The experiment's name, e.g. ``"random-neurons"``.
        quick: Whether this was the minute-scale version.
        rows: ``{**cell, **result}`` for every cell, in the order of ``cells(quick)``.
        summary: The module's ``summarize(rows)``: ``held`` (True, False or None) and
            ``verdict`` (one sentence with the numbers), plus its own fields.
        csv: Path of the CSV written (one row per cell).
        png: Path of the figure written.
        db: Path of the SQLite store of cell results.
        computed: Cells computed by this call (the others were read from the store).
    """

    name: str
    quick: bool
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    csv: Path
    png: Path
    db: Path
    computed: int


def _registry() -> dict[str, ModuleType]:
    from synaprune.experiments import EXPERIMENTS

    return EXPERIMENTS


def _check_cell(name: str, cell: object) -> dict[str, Any]:
    if not isinstance(cell, dict) or not all(
        isinstance(k, str) and isinstance(v, _PLAIN) for k, v in cell.items()
    ):
        raise TypeError(f"experiment '{name}': a cell must be a dict of str/int/float/bool, "
                        f"got {cell!r}")
    return cell


def _check_result(name: str, cell: dict[str, Any], result: object) -> dict[str, Any]:
    if not isinstance(result, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, _PLAIN)) for k, v in result.items()
    ):
        raise TypeError(f"experiment '{name}': run_cell({cell}) must return a flat dict of "
                        f"numbers/str/bool/None, got {result!r}")
    clash = sorted(set(result) & set(cell))
    if clash:
        raise TypeError(f"experiment '{name}': run_cell returned cell keys {clash}")
    return result


class _Store:
    """Cell results of one experiment in SQLite; each insert is its own transaction."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        if readonly:  # a reader (the report) neither creates nor changes the file
            self.conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
            return
        self.conn = sqlite3.connect(path)
        with self.conn:
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS cells (key TEXT PRIMARY KEY, version TEXT NOT NULL,"
                " mode TEXT NOT NULL, cell TEXT NOT NULL, result TEXT NOT NULL)")

    @staticmethod
    def key(cell: dict[str, Any], version: str, mode: str) -> str:
        return json.dumps({"cell": cell, "mode": mode, "version": version}, sort_keys=True,
                          separators=(",", ":"), allow_nan=True)

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT result FROM cells WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, version: str, mode: str, cell: dict[str, Any],
            result: dict[str, Any]) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?)",
                (key, version, mode, json.dumps(cell, sort_keys=True),
                 json.dumps(result, allow_nan=True)))

    def close(self) -> None:
        self.conn.close()


def _csv_text_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)

    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float) and math.isnan(value):
            return "nan"
        return repr(value) if isinstance(value, float) else str(value)

    return columns, [[text(row.get(c)) for c in columns] for row in rows]


def _temp_path(directory: Path, target: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{target.stem}.", suffix=target.suffix)
    os.close(fd)
    umask = os.umask(0)  # mkstemp makes the file 0600; give it the mode open() would
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


def _write_outputs(module: ModuleType, rows: list[dict[str, Any]], csv_path: Path,
                   png_path: Path) -> None:
    directory = csv_path.parent
    tmp_csv, tmp_png = _temp_path(directory, csv_path), _temp_path(directory, png_path)
    try:
        columns, body = _csv_text_rows(rows)
        with open(tmp_csv, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            writer.writerows(body)
        module.plot(rows, tmp_png)
        os.replace(tmp_csv, csv_path)
        os.replace(tmp_png, png_path)
    finally:
        for tmp in (tmp_csv, tmp_png):
            if tmp.exists():
                tmp.unlink()


def _stored_rows(store: _Store, cells: list[dict[str, Any]],
                 keys: list[str]) -> list[dict[str, Any]]:
    """``{**cell, **result}`` of the cells stored, in the order of ``cells``."""
    rows = []
    for cell, key in zip(cells, keys, strict=True):
        stored = store.get(key)
        if stored is not None:
            rows.append({**cell, **stored})
    return rows


@dataclass(frozen=True)
class StoredExperiment:
    """What an experiments folder holds of one experiment (:func:`stored_experiment`).

    Attributes:
        name: The experiment's name.
        quick: Whether the rows are of the quick version (the full one is preferred when both
            are complete).
        rows: ``{**cell, **result}`` of the stored cells, in the order of ``cells(quick)``.
        cells: How many cells that version has.
        summary: The module's ``summarize(rows)`` when every cell is stored, else None.
    """

    name: str
    quick: bool
    rows: list[dict[str, Any]]
    cells: int
    summary: dict[str, Any] | None


def stored_experiment(name: str, out_dir: str | os.PathLike) -> StoredExperiment | None:
    """Read what ``run_experiment(name, out_dir, ...)`` stored, computing nothing.

    The full version if all its cells are stored, else the quick one if all of its are, else
    whichever has more cells stored (incomplete: ``summary`` None).

    Args:
        name: A key of :data:`synaprune.experiments.EXPERIMENTS`.
        out_dir: The experiments' output folder.

    Returns:
        The stored results, or None when ``out_dir`` holds no store of this experiment.

    Raises:
        ValueError: Unknown experiment name, or a store that cannot be read.
    """
    experiments = _registry()
    if name not in experiments:
        raise ValueError(f"unknown experiment '{name}'; choose from: "
                         f"{', '.join(sorted(experiments))}")
    module = experiments[name]
    path = Path(out_dir) / f"{name}.db"
    if not path.is_file():
        return None
    version = str(getattr(module, "VERSION", "1"))
    found = []
    try:
        store = _Store(path, readonly=True)
        try:
            for quick in (False, True):
                cells = [_check_cell(name, c) for c in module.cells(quick)]
                keys = [_Store.key(c, version, "quick" if quick else "full") for c in cells]
                found.append((quick, _stored_rows(store, cells, keys), len(cells)))
        finally:
            store.close()
    except sqlite3.Error as exc:
        raise ValueError(f"cannot read the result store '{path}': {exc}") from None
    complete = [f for f in found if len(f[1]) == f[2]]
    quick, rows, count = complete[0] if complete else max(found, key=lambda f: len(f[1]))
    return StoredExperiment(name=name, quick=quick, rows=rows, cells=count,
                            summary=module.summarize(rows) if complete else None)


def run_experiment(name: str, out_dir: str | os.PathLike = "out/experiments", *,
                   quick: bool = False, progress: bool | None = None) -> ExperimentResult:
    """Run (or resume) an experiment and write its CSV and figure.

    Args:
        name: A key of :data:`synaprune.experiments.EXPERIMENTS`, e.g. ``"depth"``.
        out_dir: Directory of ``NAME.db``, ``NAME.csv`` and ``NAME.png`` (created if needed).
        quick: The minute-scale version (its results are stored under their own keys).
        progress: Show a tqdm bar on standard error; default when standard error is a TTY.

    Returns:
        An :class:`ExperimentResult`.

    Raises:
        ValueError: Unknown experiment name, or ``out_dir`` is not a usable directory.
    """
    experiments = _registry()
    if name not in experiments:
        raise ValueError(f"unknown experiment '{name}'; choose from: "
                         f"{', '.join(sorted(experiments))}")
    module = experiments[name]
    if str(out_dir).strip() == "":
        raise ValueError("--out is empty; give a directory, e.g. --out out/experiments")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out '{out}' exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent is a file, no permission, read-only file system
        raise ValueError(f"cannot create --out '{out}': {exc.strerror or exc}") from None
    db_path, csv_path, png_path = out / f"{name}.db", out / f"{name}.csv", out / f"{name}.png"
    # Found now, not after the cells are computed: outputs that could not be replaced.
    for target in (csv_path, png_path):
        if target.exists() and not target.is_file():
            raise ValueError(f"'{target}' exists and is not a file; move it or choose another "
                             "--out")
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"--out '{out}' is not writable; choose another directory")
    version = str(getattr(module, "VERSION", "1"))
    mode = "quick" if quick else "full"
    cells = [_check_cell(name, c) for c in module.cells(quick)]
    try:
        store = _Store(db_path)
    except sqlite3.Error as exc:
        raise ValueError(f"cannot open the result store '{db_path}': {exc}") from None
    computed = 0
    try:
        keys = [_Store.key(c, version, mode) for c in cells]
        todo = [i for i, k in enumerate(keys) if store.get(k) is None]
        if progress is None:
            progress = sys.stderr.isatty()
        from tqdm import tqdm

        with tqdm(total=len(cells), initial=len(cells) - len(todo), desc=name, unit="cell",
                  file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
            for i in todo:
                result = _check_result(name, cells[i], module.run_cell(dict(cells[i])))
                store.put(keys[i], version, mode, cells[i], result)
                computed += 1
                bar.update(1)
        # Rows always come back from the store, so a resumed run and a fresh one write the
        # same bytes (JSON round-trips floats exactly).
        rows = _stored_rows(store, cells, keys)
        assert len(rows) == len(cells)
    finally:
        store.close()
    summary = module.summarize(rows)
    _write_outputs(module, rows, csv_path, png_path)
    return ExperimentResult(name=name, quick=quick, rows=rows, summary=summary, csv=csv_path,
                            png=png_path, db=db_path, computed=computed)
