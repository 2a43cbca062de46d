"""The experiment framework: resumable per cell, atomic outputs, one-line bad-input errors."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest

from synaprune.cli import main
from synaprune.experiments import EXPERIMENTS, run_experiment


def _toy(calls: list[dict], fail_after: int | None = None) -> types.ModuleType:
    """A tiny experiment: cell (a, seed) -> a * seed / 3 (a float with many digits)."""
    module = types.ModuleType("toy")
    module.NAME, module.SEED, module.CLAIM = "toy", "000", "a toy claim"

    def cells(quick):
        return [{"a": a, "seed": s} for a in (1, 2) for s in range(3 if quick else 4)]

    def run_cell(cell):
        if fail_after is not None and len(calls) >= fail_after:
            raise RuntimeError("killed midway")
        calls.append(cell)
        return {"value": cell["a"] * cell["seed"] / 3, "ok": True, "missing": float("nan")}

    def summarize(rows):
        return {"held": None, "verdict": f"{len(rows)} rows"}

    def plot(rows, path):
        Path(path).write_bytes(b"PNG " + str(len(rows)).encode())

    module.cells, module.run_cell, module.summarize, module.plot = cells, run_cell, summarize, plot
    return module


@pytest.fixture
def toy(monkeypatch):
    calls: list[dict] = []
    module = _toy(calls)
    monkeypatch.setitem(EXPERIMENTS, "toy", module)
    return module, calls


def test_interrupted_run_resumes_missing_cells_only_and_writes_the_same_csv(
        toy, tmp_path, monkeypatch):
    module, calls = toy
    fresh = run_experiment("toy", tmp_path / "fresh", quick=True, progress=False)
    assert fresh.computed == 6 and len(calls) == 6
    calls.clear()
    monkeypatch.setattr(module, "run_cell", _toy(calls, fail_after=4).run_cell)
    with pytest.raises(RuntimeError, match="killed midway"):
        run_experiment("toy", tmp_path / "resumed", quick=True, progress=False)
    assert not (tmp_path / "resumed" / "toy.csv").exists()
    calls.clear()
    monkeypatch.setattr(module, "run_cell", _toy(calls).run_cell)
    resumed = run_experiment("toy", tmp_path / "resumed", quick=True, progress=False)
    assert resumed.computed == 2 and len(calls) == 2  # the four stored cells are not rerun
    assert resumed.csv.read_bytes() == fresh.csv.read_bytes()
    assert [r["value"] for r in resumed.rows] == [a * s / 3 for a in (1, 2) for s in range(3)]
    # A third run computes nothing; the full version is a different set of keys.
    assert run_experiment("toy", tmp_path / "resumed", quick=True, progress=False).computed == 0
    assert run_experiment("toy", tmp_path / "resumed", quick=False, progress=False).computed == 8


def test_csv_holds_every_cell_with_full_precision(toy, tmp_path):
    result = run_experiment("toy", tmp_path, quick=True, progress=False)
    lines = result.csv.read_text().splitlines()
    assert lines[0] == "a,seed,value,ok,missing"
    assert lines[2] == f"1,1,{1 / 3!r},True,nan" and len(lines) == 7


def test_failure_while_writing_leaves_the_previous_outputs_intact(toy, tmp_path, monkeypatch):
    module, _ = toy
    first = run_experiment("toy", tmp_path, quick=True, progress=False)
    before = first.csv.read_bytes(), first.png.read_bytes()

    def broken_plot(rows, path):
        Path(path).write_bytes(b"half a figure")
        raise OSError("disk full")

    monkeypatch.setattr(module, "plot", broken_plot)
    with pytest.raises(OSError, match="disk full"):
        run_experiment("toy", tmp_path, quick=False, progress=False)  # new rows, new CSV
    assert (first.csv.read_bytes(), first.png.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.csv", "toy.db", "toy.png"]


def test_outputs_get_the_users_umask(toy, tmp_path):
    old = os.umask(0o027)
    try:
        result = run_experiment("toy", tmp_path, quick=True, progress=False)
    finally:
        os.umask(old)
    assert result.csv.stat().st_mode & 0o777 == 0o640
    assert result.png.stat().st_mode & 0o777 == 0o640


def test_cli_runs_prints_verdict_and_paths_last(toy, tmp_path, capsys):
    assert main(["experiment", "toy", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "6 rows" in out[0]
    assert out[-3:] == [f"results: {tmp_path / 'toy.csv'}", f"figure: {tmp_path / 'toy.png'}",
                        f"store: {tmp_path / 'toy.db'}"]
    assert main(["experiment", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "toy (seed 000): a toy claim" in listing and "random-neurons (seed 003)" in listing


@pytest.mark.parametrize("argv, words", [
    (["experiment", "no-such-thing"], "unknown experiment 'no-such-thing'"),
    (["experiment"], "name an experiment"),
])
def test_cli_bad_input_one_line_status_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_cli_out_that_is_a_file_is_refused_and_kept(toy, tmp_path, capsys):
    target = tmp_path / "results"
    target.write_text("keep me")
    assert main(["experiment", "toy", "--quick", "--out", str(target), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a directory" in err[0]
    assert target.read_text() == "keep me"


def test_cli_corrupt_store_is_a_usage_error_and_kept(toy, tmp_path, capsys):
    db = tmp_path / "toy.db"
    db.write_bytes(b"this is not sqlite" * 100)
    assert main(["experiment", "toy", "--quick", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "toy.db" in err[0]
    assert db.read_bytes() == b"this is not sqlite" * 100


def test_cli_out_under_a_file_is_refused_and_kept(toy, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert main(["experiment", "toy", "--quick", "--out", str(blocker / "sub"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create --out" in err[0]
    assert blocker.read_text() == "keep me"


def test_cli_empty_out_is_refused(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["experiment", "toy", "--quick", "--out", "", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out is empty" in err[0]
    assert list(tmp_path.iterdir()) == []  # nothing written to the current directory


def test_output_that_is_a_directory_is_refused_before_any_cell(toy, tmp_path, capsys):
    _module, calls = toy
    (tmp_path / "toy.png").mkdir()
    assert main(["experiment", "toy", "--quick", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "toy.png" in err[0] and "not a file" in err[0]
    assert calls == []  # refused before the long work, not after it
def test_stored_experiment_reads_without_computing_and_prefers_the_complete_full_version(
        toy, tmp_path):
    from synaprune.experiments import stored_experiment

    _, calls = toy
    assert stored_experiment("toy", tmp_path) is None  # nothing stored: nothing created
    assert not (tmp_path / "toy.db").exists()
    run_experiment("toy", tmp_path, quick=True, progress=False)
    calls.clear()
    quick = stored_experiment("toy", tmp_path)
    assert calls == [] and quick.quick and quick.cells == 6
    assert quick.summary == {"held": None, "verdict": "6 rows"}
    assert [r["value"] for r in quick.rows] == [a * s / 3 for a in (1, 2) for s in range(3)]
    run_experiment("toy", tmp_path, quick=False, progress=False)
    full = stored_experiment("toy", tmp_path)
    assert not full.quick and full.summary == {"held": None, "verdict": "8 rows"}


def test_stored_experiment_says_an_incomplete_store_is_incomplete(toy, tmp_path, monkeypatch):
    from synaprune.experiments import stored_experiment

    module, calls = toy
    monkeypatch.setattr(module, "run_cell", _toy(calls, fail_after=4).run_cell)
    with pytest.raises(RuntimeError):
        run_experiment("toy", tmp_path, quick=True, progress=False)
    partial = stored_experiment("toy", tmp_path)
    assert partial.summary is None and len(partial.rows) == 4 and partial.cells == 6
