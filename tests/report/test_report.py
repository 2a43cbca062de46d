"""synaprune report: what it shows from a real database, with and without the columns later
stores add, byte-equal rebuilds, atomic replacement, and one-line refusals of bad input."""

from __future__ import annotations

import math
import re
import shutil
import sqlite3
import types
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from report_cases import TS, add_contract_columns

from synaprune.bench.store import ResultStore
from synaprune.cli import main
from synaprune.report import _stats
from synaprune.report.build import MARKER, write_report


def _copy(db: Path, tmp_path: Path, name: str = "copy.db") -> Path:
    out = tmp_path / name
    shutil.copy(db, out)
    return out


class _Page(HTMLParser):
    """Ids, internal links, images and table rows of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.images: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag == "img":
            self.images.append(a["src"])
        for key in ("src", "href"):
            if key in a and re.match(r"^(https?:)?//", a[key]):
                self.external.append(a[key])
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _page(index: Path) -> tuple[str, _Page]:
    text = index.read_text()
    page = _Page()
    page.feed(text)
    return text, page


def _method_row(page: _Page, label_start: str) -> dict[str, str]:
    """The table row of a method, keyed by its table's header."""
    header: list[str] = []
    for row in page.rows:
        if row and row[0] == "method":
            header = row
        elif row and row[0].startswith(label_start) and len(row) == len(header):
            return dict(zip(header, row, strict=True))
    raise AssertionError(f"no row {label_start!r}")


def test_report_of_an_old_database_shows_what_exists_and_says_what_is_missing(lab_db, tmp_path):
    index = write_report(lab_db, tmp_path / "rep", progress=False)
    text, page = _page(index)
    assert "Failure kinds not recorded in this database" in text
    assert "Costs not recorded in this database" in text
    assert not list((tmp_path / "rep" / "fig").glob("*cost*"))
    with sqlite3.connect(lab_db) as conn:  # brute force: the counts straight from SQL
        wins, n = conn.execute("SELECT sum(success), count(*) FROM runs WHERE method_name='gd'"
                               " AND problem_name='xor'").fetchone()
    row = _method_row(page, "gd lr=2")
    assert f"({wins}/{n})" in row["success, 95% CI"]
    assert row["failed, kind not recorded"].startswith(f"{n - wins} [")
    # nothing from the network, every image a file of the folder, every anchor present
    assert page.external == [] and "<script" not in text
    for src in page.images:
        assert (tmp_path / "rep" / src).stat().st_size > 0
    for href in page.links:
        assert href.startswith("#") and href[1:] in page.ids, href
    # stuck xor runs are diagnosed and linked; the exact problem says why it is not
    assert any(link.startswith("#run-") for link in page.links)
    assert "its loss is exact (no data)" in text
    assert "Verdict:" in text


def test_report_picks_up_failure_kinds_and_costs_when_the_database_has_them(lab_db, tmp_path):
    db = _copy(lab_db, tmp_path)
    kinds = add_contract_columns(db)
    index = write_report(db, tmp_path / "rep", progress=False)
    text, page = _page(index)
    assert "not recorded" not in text  # neither the notes nor the legend's "kind not recorded"
    assert '<section id="problem-1"><h2>xor' in text  # the problem with most methods first
    assert (tmp_path / "rep" / "fig" / "problem-1-loss-cost.png").stat().st_size > 0
    rows = [r for r in ResultStore(db, readonly=True).rows(["xor"])]
    for method, label in (("gd", "gd lr=2"), ("synaprune-b", "synaprune-b")):
        group = [r for r in rows if r["method_name"] == method]
        row = _method_row(page, label)
        spurious = sum(1 for r in group if kinds[r["id"]][0] == "spurious")
        saddle = sum(1 for r in group if kinds[r["id"]][0] == "saddle")
        assert row["spurious minimum"].startswith(f"{spurious} [")
        assert row["saddle"].startswith(f"{saddle} [")
    # equal cost: every method gets the smallest budget x cost per step (gd: 300 x 1)
    assert "success within cost 300" in _method_row(page, "gd lr=2")
    b = [r for r in rows if r["method_name"] == "synaprune-b"]
    wins = sum(1 for r in b if r["success"] and r["steps_to_success"] * 2 <= 300)
    assert f"({wins}/{len(b)})" in _method_row(page, "synaprune-b")["success within cost 300"]
    assert "recorded kind" in text  # the diagnosed runs show their recorded kind


def test_a_kind_that_contradicts_the_status_is_flagged(lab_db, tmp_path):
    db = _copy(lab_db, tmp_path)
    add_contract_columns(db)
    with sqlite3.connect(db) as conn:
        run_id = conn.execute("SELECT min(id) FROM runs WHERE success=1 AND problem_name='xor'"
                              ).fetchone()[0]
        conn.execute("UPDATE runs SET kind='spurious' WHERE id=?", (run_id,))
    text, _ = _page(write_report(db, tmp_path / "rep", problems=["xor"], progress=False,
                                 diagnoses=0))
    assert f"1 runs have a recorded kind that contradicts their status (ids {run_id})" in text


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_rebuilding_from_the_same_database_gives_the_same_bytes(lab_db, tmp_path):
    out = tmp_path / "rep"
    write_report(lab_db, out, progress=False)
    first = _snapshot(out)
    write_report(lab_db, out, progress=False)
    assert _snapshot(out) == first  # bit-equality is the claim
    assert "index.html" in first and any(k.startswith("fig/") for k in first)


def test_a_failure_midway_leaves_the_previous_report_and_no_temporary(lab_db, tmp_path,
                                                                     monkeypatch):
    out = tmp_path / "rep"
    write_report(lab_db, out, problems=["xor"], progress=False, diagnoses=0)
    before = _snapshot(out)
    import synaprune.report.build as build

    def broken(*args, **kwargs):
        raise RuntimeError("killed midway")

    monkeypatch.setattr(build, "plot_final_losses", broken)
    with pytest.raises(RuntimeError, match="killed midway"):
        write_report(lab_db, out, problems=["xor"], progress=False, diagnoses=0)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_empty_and_partial_databases_are_reported_as_such(lab_db, tmp_path):
    empty = tmp_path / "empty.db"
    ResultStore(empty).close()
    text, _ = _page(write_report(empty, tmp_path / "e", progress=False))
    assert "This database holds no runs" in text
    partial = _copy(lab_db, tmp_path)
    with sqlite3.connect(partial) as conn:
        conn.execute("DELETE FROM runs WHERE method_name='gd' AND seed >= 5")
    text, _ = _page(write_report(partial, tmp_path / "p", problems=["xor"], progress=False,
                                 diagnoses=0))
    assert "Partial: the methods were run on different seeds" in text
    assert "gd lr=2.0: 5 runs (seeds 0-4)" in text


def _cli_fails(args: list[str], capsys) -> str:
    assert main(["report", "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_input_is_one_line_exit_2_and_overwrites_nothing(lab_db, tmp_path, capsys,
                                                             unwritable):
    out = tmp_path / "rep"
    write_report(lab_db, out, problems=["xor"], progress=False, diagnoses=0)
    before = _snapshot(out)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE things (x)")
    text_file = tmp_path / "notes.db"
    text_file.write_text("not a database at all\n" * 100)
    wrong_columns = tmp_path / "wrong.db"
    with sqlite3.connect(wrong_columns) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER, name TEXT)")
    for db, words in ((other, "not a results database"), (text_file, "not a results database"),
                      (wrong_columns, "not a results database"),
                      (tmp_path / "missing.db", "no such file")):
        assert words in _cli_fails(["--db", str(db), "--out", str(out)], capsys)
    assert "Unknown problem 'no-such'" in _cli_fails(
        ["--db", str(lab_db), "--out", str(out), "--problem", "no-such"], capsys)
    assert "no runs of spirals" in _cli_fails(
        ["--db", str(lab_db), "--out", str(out), "--problem", "spirals"], capsys)
    assert "is not a folder" in _cli_fails(
        ["--db", str(lab_db), "--out", str(out), "--experiments", str(tmp_path / "nope")],
        capsys)
    assert _snapshot(out) == before
    # a folder of the user's is never replaced, nor a file
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    assert "holds other files" in _cli_fails(["--db", str(lab_db), "--out", str(mine)], capsys)
    assert (mine / "thesis.tex").read_text() == "precious"
    assert "not a folder" in _cli_fails(["--db", str(lab_db), "--out", str(text_file)], capsys)
    # a folder that cannot be written: refused before any work
    shared, deny = unwritable
    db = shutil.copy(lab_db, shared / "r.db")
    Path(db).chmod(0o666)
    locked = shared / "locked"
    locked.mkdir()
    locked.chmod(0o777)
    with deny(locked):
        assert "cannot write --out" in _cli_fails(
            ["--db", str(db), "--out", str(locked / "rep")], capsys)
    assert list(locked.iterdir()) == []


def test_cli_prints_the_report_path_and_replaces_its_own_report(lab_db, tmp_path, capsys):
    out = tmp_path / "rep"
    for _ in range(2):  # the second run replaces the report the first wrote
        assert main(["report", "--db", str(lab_db), "--out", str(out), "--quiet",
                     "--diagnoses", "0", "--problem", "xor", "--date", "2026-12-02"]) == 0
        assert capsys.readouterr().out.strip() == f"report: {out / 'index.html'}"
    text, _ = _page(out / "index.html")
    assert "Date: 2026-12-02" in text and (out / MARKER).is_file()
    assert TS not in text  # the filter kept xor only


def _brute_band(curves: list[list[tuple[float, float]]], grid: list[float], q: float):
    out = []
    for g in grid:
        values = []
        for curve in curves:
            at = [loss for x, loss in curve if x <= g]
            values.append(at[-1] if at else curve[0][1])
        values.sort()
        out.append(values[max(math.ceil(q * len(values)) - 1, 0)])  # inverted CDF
    return out


def test_loss_band_holds_stopped_runs_and_takes_order_statistics():
    rows = [
        {"curve": [[0, 1.0, 0], [10, 0.5, 0], [20, 0.001, 0]], "steps": 20, "cost": 40.0},
        {"curve": [[0, 2.0, 0], [10, None, None]], "steps": 10, "cost": None},  # diverged
        {"curve": [[0, 1.5, 0], [10, 0.7, 0], [20, 0.6, 0], [30, 0.4, 0]], "steps": 30,
         "cost": 30.0},
    ]
    band = _stats.loss_band(rows)
    curves = [[(p[0], math.inf if p[1] is None else p[1]) for p in r["curve"]] for r in rows]
    assert band.x.tolist() == [0, 10, 20, 30] and band.runs == 3
    for q, got in ((0.1, band.low), (0.5, band.median), (0.9, band.high)):
        assert got.tolist() == _brute_band(curves, band.x.tolist(), q)
    assert band.high[-1] == math.inf and band.low[-1] == 0.001  # held after stopping
    cost = _stats.loss_band(rows, cost=True)  # the run without a cost is left out
    assert cost.runs == 2 and cost.x.tolist() == [0, 10, 20, 30, 40]
    assert np.array_equal(cost.median, [1.0, 0.7, 0.5, 0.4, 0.001])


def test_equal_budget_success_counts_by_steps_and_by_cost():
    rows = [{"success": True, "steps_to_success": 50, "steps": 50, "cost": 100.0},
            {"success": True, "steps_to_success": 80, "steps": 80, "cost": 80.0},
            {"success": False, "steps_to_success": None, "steps": 100, "cost": 100.0},
            {"success": True, "steps_to_success": 10, "steps": 10, "cost": None}]
    assert _stats.equal_budget_success(rows, 60) == (2, 4)
    assert _stats.equal_budget_success(rows, 90, cost=True) == (1, 3)
    assert _stats.equal_budget_success(rows, 100, cost=True) == (2, 3)


def test_experiments_are_shown_with_their_claim_and_whether_it_held(lab_db, tmp_path,
                                                                    monkeypatch):
    from synaprune.experiments import EXPERIMENTS, run_experiment

    def toy(name: str, held: bool | None) -> types.ModuleType:
        module = types.ModuleType(name)
        module.NAME, module.SEED, module.CLAIM = name, "000", f"claim of {name}"
        module.cells = lambda quick: [{"seed": s} for s in range(2 if quick else 3)]
        module.run_cell = lambda cell: {"value": cell["seed"] / 3}
        module.summarize = lambda rows: {"held": held, "verdict": f"{len(rows)} rows"}

        def plot(rows, path):
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(3, 2))
            ax.plot([r["value"] for r in rows])
            fig.savefig(path, format="png", metadata={"Software": None})
            plt.close(fig)

        module.plot = plot
        return module

    for name in list(EXPERIMENTS):
        monkeypatch.delitem(EXPERIMENTS, name)
    for name, held in (("alpha", True), ("beta", False), ("gamma", None)):
        monkeypatch.setitem(EXPERIMENTS, name, toy(name, held))
    exp = tmp_path / "exp"
    run_experiment("alpha", exp, quick=True, progress=False)
    run_experiment("beta", exp, quick=False, progress=False)
    text, page = _page(write_report(lab_db, tmp_path / "rep", experiments=exp,
                                    problems=[TS], progress=False, diagnoses=0))
    assert "claim of alpha" in text and "claim of gamma" in text
    assert re.search(r'Claim <span class="held">held</span> \(quick version, 2 cells\)', text)
    assert re.search(r'Claim <span class="nothold">did not hold</span> \(full size', text)
    assert "Not run: <code>synaprune experiment gamma" in text
    assert "fig/exp-alpha.png" in page.images and "fig/exp-beta.png" in page.images
    for src in page.images:
        assert (tmp_path / "rep" / src).stat().st_size > 0


def test_report_of_a_current_database_shows_the_kinds_the_lab_recorded(current_lab_db, tmp_path):
    index = write_report(current_lab_db, tmp_path / "rep", problems=["xor"], progress=False,
                         diagnoses=0)
    text, page = _page(index)
    assert "Failure kinds not recorded" not in text and "Costs not recorded" not in text
    rows = [r for r in ResultStore(current_lab_db, readonly=True).rows(["xor"])
            if r["method_name"] == "gd"]
    assert all(r["kind"] is not None and r["cost"] is not None for r in rows)
    row = _method_row(page, "gd lr=2")
    for kind, column in (("spurious", "spurious minimum"), ("moving", "still moving")):
        if column in row:
            assert row[column].startswith(f"{sum(r['kind'] == kind for r in rows)} [")
