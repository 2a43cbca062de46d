"""The main job's suite: every method somewhere, resumable, the report's path printed last."""

from __future__ import annotations

import sqlite3

from synaprune.bench import list_methods
from synaprune.bench.suite import QUICK_SUITE, SuiteEntry, run_suite, suite_methods
from synaprune.problems import get_problem


def test_quick_suite_runs_every_registered_method_on_some_problem():
    covered: set[str] = set()
    for entry in QUICK_SUITE:
        names, _ = suite_methods(entry)
        covered.update(names)
    assert covered == set(list_methods())
    # the hard regime: an exact teacher-student problem with k >= 10, gd among its methods
    hard = [e for e in QUICK_SUITE if get_problem(e.problem).name == "teacher-student"]
    assert hard and get_problem(hard[0].problem).options["k"] >= 10
    assert get_problem(hard[0].problem).options["exact"] is True
    assert "gd" in suite_methods(hard[0])[0]


def test_left_out_methods_are_said_with_the_reason():
    entry = SuiteEntry("teacher-student:k=3", seeds=1, steps=1,
                       skip=(("sam", "too dear"),))
    names, left_out = suite_methods(entry)
    assert "sam" not in names and "sam: too dear" in left_out
    assert "sgd" not in names and any(line.startswith("sgd: ") for line in left_out)


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_suite_is_resumable_and_prints_the_report_path_last(tmp_path, capsys):
    suite = (SuiteEntry("xor", seeds=4, steps=60, methods=("gd", "synaprune-b")),
             SuiteEntry("teacher-student:k=3", seeds=3, steps=30, methods=("gd",)))
    db, out = tmp_path / "r.db", tmp_path / "rep"
    # the first time two problems train at once (one process each), the second in-process
    assert run_suite(db, out, suite=suite, quiet=True, experiments=None, jobs=2) == 0
    text = capsys.readouterr().out
    assert text.index("== xor") < text.index("== teacher-student")  # in the suite's order
    assert text.strip().splitlines()[-1] == f"report: {out / 'index.html'}"
    assert "Verdict:" in text  # the diagnosis of a stuck xor run
    with sqlite3.connect(db) as conn:
        before = conn.execute("SELECT id, created FROM runs ORDER BY id").fetchall()
    assert len(before) == 4 * 2 + 3
    page = _snapshot(out)
    assert run_suite(db, out, suite=suite, quiet=True, experiments=None, jobs=1) == 0
    with sqlite3.connect(db) as conn:  # nothing retrained: the same rows, the same times
        assert conn.execute("SELECT id, created FROM runs ORDER BY id").fetchall() == before
    assert _snapshot(out) == page
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("report: ")


def test_a_failing_bench_stops_the_suite_with_its_status(tmp_path, capsys):
    suite = (SuiteEntry("xor", seeds=2, steps=5, methods=("gd",)),)
    db = tmp_path / "folder-as-db"
    db.mkdir()  # a database path that is a folder: bench refuses it (exit 2)
    assert run_suite(db, tmp_path / "rep", suite=suite, quiet=True, experiments=None,
                     jobs=2) == 2
    assert "cannot write database" in capsys.readouterr().out
    assert not (tmp_path / "rep").exists()
