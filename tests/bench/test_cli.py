"""The bench and results subcommands, called through their parsers."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
from pathlib import Path

import pytest

from synaprune.bench import ResultStore
from synaprune.bench.cli import add_bench_parser, add_results_parser
from synaprune.cli import main as bench_main
from synaprune.errors import UsageError


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="synaprune")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    add_results_parser(sub)
    return parser.parse_args(argv)


def _run(argv: list[str]) -> int:
    args = _parse(argv)
    return args.func(args)


BENCH = ["bench", "--problem", "teacher-student:k=4", "--method", "gd,adam:lr=0.05",
         "--seeds", "6", "--steps", "110", "--batch-seeds", "4", "--quiet", "--defaults", "plain"]


def test_bench_writes_runs_and_prints_summary(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "r.db")
    assert _run([*BENCH, "--db", db]) == 0
    out = capsys.readouterr().out
    assert "problem: teacher-student:N=2000,d=4,exact=True,k=4,n=4" in out
    assert "\ngd " in out and "\nadam lr=0.05 " in out  # names and the options changed
    with ResultStore(db) as store:
        rows = store.rows()
        assert len(rows) == 12
        assert sorted({r["method_name"] for r in rows}) == ["adam", "gd"]
        created = sorted(r["id"] for r in rows)
    # rerun: nothing new, same ids
    assert _run([*BENCH, "--db", db, "--seeds", "6"]) == 0
    with ResultStore(db) as store:
        assert sorted(r["id"] for r in store.rows()) == created


def test_results_formats(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "r.db")
    _run([*BENCH, "--db", db])
    capsys.readouterr()
    assert _run(["results", "--db", db]) == 0
    table = capsys.readouterr().out
    assert table.count("problem: ") == 1 and "95% CI" in table

    _run(["results", "--db", db, "--format", "csv"])
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["method"].split(":")[0] for r in records] == ["adam", "gd"]
    assert all(r["runs"] == "6" for r in records)

    _run(["results", "--db", db, "--format", "json", "--problem", "teacher-student:k=4"])
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 2 and {d["budget"] for d in data} == {110}
    adam = next(d for d in data if d["method"].startswith("adam"))
    with ResultStore(db) as store:
        wins = sum(r["success"] for r in store.rows() if r["method_name"] == "adam")
    assert adam["successes"] == wins

    _run(["results", "--db", db, "--format", "json", "--problem", "teacher-student:k=5"])
    assert json.loads(capsys.readouterr().out) == []
    _run(["results", "--db", db, "--format", "json", "--problem", "xor"])
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--problem", "nope", "--method", "gd"], "Unknown problem 'nope'"),
        (["--problem", "xor:wide=3", "--method", "gd"], "wide"),
        (["--problem", "xor", "--method", "gd,rmsprop"], "Unknown method 'rmsprop'"),
        (["--problem", "xor", "--method", "adam:lr=fast"], "Bad value 'fast'"),
        (["--problem", "xor", "--method", "adam:beta=0.9"], "Unknown option 'beta'"),
        (["--problem", "teacher-student", "--method", "synaprune-c"], "hidden activations"),
        (["--problem", "teacher-student", "--method", "sgd"], "minibatches"),
        (["--problem", "xor", "--method", "gd", "--seeds", "0"], "--seeds"),
        (["--problem", "xor", "--method", "gd", "--steps", "-1"], "--steps"),
        (["--problem", "xor", "--method", "gd", "--batch-seeds", "0"], "--batch-seeds"),
        (["--problem", "xor", "--method", "gd", "--threads", "0"], "--threads"),
    ],
)
def test_bench_bad_input_raises_usage_error(tmp_path: Path, extra: list[str],
                                            match: str) -> None:
    with pytest.raises(UsageError, match=match):
        _run(["bench", "--db", str(tmp_path / "r.db"), "--quiet", *extra])
    assert not (tmp_path / "r.db").exists()  # refused before touching the database


def test_results_bad_input_raises_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        _run(["results", "--db", str(tmp_path / "missing.db")])
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all " * 200)
    with pytest.raises(UsageError, match="cannot read database"):
        _run(["results", "--db", str(junk)])
    db = str(tmp_path / "r.db")
    ResultStore(db).close()
    with pytest.raises(UsageError, match="Unknown problem 'nope'"):
        _run(["results", "--db", db, "--problem", "nope"])
    with pytest.raises(UsageError, match="unknown format 'xml'"):
        _run(["results", "--db", db, "--format", "xml"])


def test_bench_into_unwritable_path_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot write database"):
        _run(["bench", "--problem", "xor", "--method", "gd", "--quiet",
              "--db", str(tmp_path / "no" / "such" / "dir.db")])


def test_module_entry_point_prints_one_line_and_exits_2(tmp_path: Path, capsys) -> None:
    assert bench_main(["results", "--db", str(tmp_path / "missing.db")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("synaprune results: error: ") and err.count("\n") == 1


def test_bench_progress_bar_goes_to_stderr(tmp_path: Path, capsys) -> None:
    argv = ["bench", "--problem", "xor", "--method", "gd", "--seeds", "3", "--steps", "5",
            "--db", str(tmp_path / "r.db")]
    assert _run(argv) == 0
    captured = capsys.readouterr()
    assert "3/3" in captured.err  # tqdm's final count
    assert "problem: xor:hidden=2" in captured.out and "3/3" not in captured.out


def test_results_runs_lists_ids_with_filters(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "r.db")
    _run([*BENCH, "--db", db])
    capsys.readouterr()
    with ResultStore(db) as store:
        stored = {r["id"]: r for r in store.rows()}
    assert _run(["results", "--db", db, "--runs", "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(r["id"] for r in listed) == sorted(stored)
    for r in listed:
        row = stored[r["id"]]
        assert list(r) == ["id", "problem", "method", "seed", "budget", "status", "steps",
                           "final_loss", "final_grad_norm", "kind", "min_eig", "saddle_index",
                           "cost"]
        assert r["kind"] == row["kind"] and r["cost"] == row["cost"] == r["steps"]  # gd
        assert (r["problem"], r["method"], r["seed"], r["status"], r["final_loss"]) == (
            row["problem"], row["method"], row["seed"], row["status"], row["final_loss"])
        assert r["final_grad_norm"] == row["final_grad_norm"]

    _run(["results", "--db", db, "--runs", "--method", "gd", "--format", "csv"])
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(records) == 6 and {r["method"].split(":")[0] for r in records} == {"gd"}
    assert [int(r["seed"]) for r in records] == list(range(6))

    _run(["results", "--db", db, "--runs", "--problem", "teacher-student", "--method",
          "adam:lr=0.05"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["id", "seed", "status", "steps", "final", "loss", "final",
                                "grad", "norm", "kind", "min", "eig", "cost", "problem",
                                "method"]
    assert len(table) == 2 + 6 and all(line.endswith(" adam lr=0.05") for line in table[2:])

    _run(["results", "--db", db, "--runs", "--problem", "xor"])
    assert capsys.readouterr().out == "no runs match\n"
    _run(["results", "--db", db, "--runs", "--method", "adam:lr=0.01"])  # no run has lr=0.01
    assert capsys.readouterr().out == "no runs match\n"
    # --method also filters the summary
    _run(["results", "--db", db, "--method", "adam", "--format", "json"])
    assert [d["method"].split(":")[0] for d in json.loads(capsys.readouterr().out)] == ["adam"]
    with pytest.raises(UsageError, match="Unknown method 'rmsprop'"):
        _run(["results", "--db", db, "--runs", "--method", "rmsprop"])


def test_bench_takes_the_options_tuned_on_each_problem(tmp_path: Path, capsys,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from synaprune.bench import _tuned

    monkeypatch.setattr(_tuned, "TUNED", {"xor": {"gd": {"lr": 2.5}}})
    db = str(tmp_path / "r.db")
    common = ["bench", "--problem", "xor", "--problem", "spirals:N=20", "--method", "gd",
              "--seeds", "2", "--steps", "3", "--quiet", "--db", db]
    assert _run(common) == 0
    assert _run([*common, "--defaults", "plain"]) == 0
    with ResultStore(db) as store:
        methods = {(r["problem_name"], r["method"]) for r in store.rows()}
    assert methods == {("xor", "gd:lr=2.5"), ("xor", "gd:lr=0.1"), ("spirals", "gd:lr=0.1")}


def test_results_plot_draws_the_summaries(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "r.db")
    assert _run([*BENCH, "--db", db]) == 0
    png = tmp_path / "fig" / "rates.png"
    assert _run(["results", "--db", db, "--plot", str(png)]) == 0
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UsageError, match="no runs match"):
        _run(["results", "--db", db, "--problem", "xor", "--plot", str(png)])


def test_output_into_a_closed_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    """``synaprune results | head -0``: the reader is gone before anything is written."""
    import subprocess
    import sys

    db = str(tmp_path / "r.db")
    assert _run([*BENCH, "--db", db]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "synaprune", "results", "--db", db],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def _stored_db(folder: Path) -> Path:
    """A results database with 2 runs, its WAL checkpointed and removed (closed)."""
    db = folder / "sub" / "r.db"
    db.parent.mkdir()
    db.parent.chmod(0o777)
    assert _run(["bench", "--problem", "xor", "--method", "gd", "--seeds", "2", "--steps", "5",
                 "--quiet", "--db", str(db)]) == 0
    assert sorted(p.name for p in db.parent.iterdir()) == ["r.db"]
    return db


@pytest.mark.parametrize("what", ["file", "folder"])
def test_bench_refuses_an_unwritable_database_before_training(
        unwritable, what: str, capsys, monkeypatch) -> None:
    shared, deny = unwritable
    db = _stored_db(shared)
    db.chmod(0o666)
    before = db.read_bytes()
    capsys.readouterr()

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the database cannot be written")

    # (the module, not the function synaprune.bench.sweep that shadows it)
    monkeypatch.setattr(sys.modules["synaprune.bench.sweep"], "run_seeds", no_training)
    with deny(db if what == "file" else db.parent):
        status = bench_main(["bench", "--problem", "xor", "--method", "adam", "--seeds", "2",
                             "--steps", "5", "--quiet", "--db", str(db)])
    assert status == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert f"cannot write database '{db}'" in captured.err and "permissions" in captured.err
    assert db.read_bytes() == before  # nothing saved is lost or changed
    wal = db.with_name("r.db-wal")  # left empty by the refused connection when it may be made
    assert not wal.exists() or wal.stat().st_size == 0


@pytest.mark.parametrize("what", ["file", "folder"])
def test_results_reads_a_database_that_cannot_be_written(unwritable, what: str,
                                                         capsys) -> None:
    shared, deny = unwritable
    db = _stored_db(shared)
    db.chmod(0o666)
    before = db.read_bytes()
    capsys.readouterr()
    outputs = []
    # Locked first: a reader leaves r.db-shm and r.db-wal behind, with which a mode=ro reader
    # would manage in a locked folder without any fix.
    for locked in (True, False):
        with deny(db if what == "file" else db.parent) if locked else contextlib.nullcontext():
            for extra in ([], ["--runs", "--format", "json"]):
                assert bench_main(["results", "--db", str(db), *extra]) == 0
                outputs.append(capsys.readouterr().out)
    assert outputs[:2] == outputs[2:]  # the same tables whether writable or not
    assert "gd" in outputs[0] and len(json.loads(outputs[1])) == 2
    assert db.read_bytes() == before


def test_results_refuses_a_pending_wal_in_an_unwritable_folder(unwritable, capsys) -> None:
    """An immutable reader would ignore the -wal, i.e. silently miss committed runs."""
    import shutil
    import sqlite3

    shared, deny = unwritable
    db = _stored_db(shared)
    writer = sqlite3.connect(db)  # keeps the WAL: rows committed but not checkpointed
    writer.execute("PRAGMA wal_autocheckpoint=0")
    with writer:
        writer.execute("DELETE FROM runs WHERE seed = 1")
    copy = shared / "copy"
    copy.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(f"{db}{suffix}", copy / f"r.db{suffix}")
        (copy / f"r.db{suffix}").chmod(0o666)
    writer.close()
    assert (copy / "r.db-wal").stat().st_size > 0
    ignored = sqlite3.connect(f"file:{copy / 'r.db'}?mode=ro&immutable=1", uri=True)
    assert ignored.execute("SELECT count(*) FROM runs").fetchone()[0] == 2  # the wrong count
    ignored.close()
    capsys.readouterr()
    with deny(copy):
        assert bench_main(["results", "--db", str(copy / "r.db")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "r.db-wal may hold rows" in err
    assert bench_main(["results", "--db", str(copy / "r.db"), "--runs", "--format", "json"]) == 0
    assert [r["seed"] for r in json.loads(capsys.readouterr().out)] == [0]  # writable: right


def test_results_format_text_is_the_default_and_table_its_old_name(tmp_path: Path,
                                                                   capsys) -> None:
    """One word for one thing: ``--format text``, as for ``synaprune diagnose``."""
    db = _stored_db(tmp_path)
    capsys.readouterr()
    outputs = []
    for extra in ([], ["--format", "text"], ["--format", "table"]):
        for runs in ([], ["--runs"]):
            assert _run(["results", "--db", str(db), *runs, *extra]) == 0
            outputs.append(capsys.readouterr().out)
    assert outputs[0::2] == [outputs[0]] * 3 and outputs[1::2] == [outputs[1]] * 3
    assert outputs[0].startswith("problem: xor") and outputs[1].startswith("id ")
    help_text = _parse(["results"])  # the parser's default, as --help shows it
    assert help_text.format == "text"


def test_results_filters_take_names_in_any_case(tmp_path: Path, capsys) -> None:
    """The spec rule (names case-insensitive) holds for the filters too."""
    db = _stored_db(tmp_path)
    capsys.readouterr()
    outputs = []
    for problem, method in (("xor", "gd"), ("XOR", "GD"), ("Xor", "Gd")):
        assert _run(["results", "--db", str(db), "--runs", "--format", "json", "--problem",
                     problem, "--method", method]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert len(outputs[0]) == 2 and outputs == [outputs[0]] * 3


def test_bench_until_converged_stores_its_rule_and_refuses_to_mix_rules(tmp_path: Path,
                                                                       capsys) -> None:
    """A cell run with one stopping rule is never topped up (or skipped) under another: the
    second bench is refused before anything trains, with one line."""
    db = str(tmp_path / "r.db")
    small = ["bench", "--problem", "teacher-student:k=4", "--method", "gd", "--seeds", "3",
             "--steps", "60", "--quiet", "--defaults", "plain", "--db", db]
    assert _run([*small, "--until-converged", "--grad-tol", "1e-3"]) == 0
    assert "stopping rule: until-converged,grad_tol=0.001" in capsys.readouterr().out
    with ResultStore(db) as store:
        rows = store.rows()
    assert {r["stop_rule"] for r in rows} == {"until-converged,grad_tol=0.001"}
    assert all(r["kind"] in ("global", "spurious", "saddle", "moving") for r in rows)
    with pytest.raises(UsageError, match=r"stopping rule until-converged,grad_tol=0\.001"):
        _run([*small, "--seeds", "4"])
    with ResultStore(db) as store:
        assert store.count() == 3  # nothing trained or written by the refused call
    with pytest.raises(UsageError, match="--grad-tol must be a positive number"):
        _run([*small, "--grad-tol", "-1"])


def test_results_at_cost_and_old_rows_read_as_not_recorded(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "r.db")
    _run([*BENCH, "--db", db])
    capsys.readouterr()
    # as if written before kinds and costs were stored
    with ResultStore(db) as store, store.conn:
        store.conn.execute("UPDATE runs SET kind = NULL, cost = NULL WHERE seed < 2")
    assert _run(["results", "--db", db, "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert all(r["kind_not_recorded"] == 2 and r["cost_not_recorded"] == 2 for r in records)
    assert _run(["results", "--db", db]) == 0
    assert "not recorded" in capsys.readouterr().out
    assert _run(["results", "--db", db, "--at-cost", "50", "--format", "json"]) == 0
    at = json.loads(capsys.readouterr().out)
    assert all(r["runs"] == 4 and r["at_cost"] == 50.0 for r in at)
    with pytest.raises(UsageError, match="--at-cost must be a positive number"):
        _run(["results", "--db", db, "--at-cost", "nan"])
    with ResultStore(db) as store, store.conn:
        store.conn.execute("UPDATE runs SET cost = NULL")
    with pytest.raises(UsageError, match="none of the matching runs recorded its cost"):
        _run(["results", "--db", db, "--at-cost", "50"])


def test_bench_ray_refuses_a_stopping_rule_it_would_ignore(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    for extra in (["--until-converged"], ["--grad-tol", "1e-8"]):
        with pytest.raises(UsageError, match="not available with --ray"):
            _run(["bench", "--problem", "xor", "--method", "gd", "--db", str(db), "--quiet",
                  "--ray", "auto", *extra])
    assert not db.exists()


def test_bench_names_a_missing_folder_before_training(tmp_path: Path, capsys,
                                                      monkeypatch) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("trained although the database cannot be written")

    monkeypatch.setattr(sys.modules["synaprune.bench.sweep"], "run_seeds", no_training)
    db = tmp_path / "missing" / "r.db"
    status = bench_main(["bench", "--problem", "xor", "--method", "gd", "--seeds", "2",
                         "--steps", "5", "--quiet", "--db", str(db)])
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"the folder '{db.parent}' does not exist" in err
    assert not db.parent.exists()  # not created behind the user's back
