"""``synaprune diagnose``: parsed args on temporary files, including every bad input."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from torch import nn

from synaprune.diagnose.cli import add_diagnose_parser, build_mlp
from synaprune.errors import UsageError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="synaprune")
    sub = parser.add_subparsers(dest="command", required=True)
    add_diagnose_parser(sub)
    return parser.parse_args(["diagnose", *argv])


def run(*argv: str) -> int:
    args = parse(*argv)
    return args.func(args)


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((20, 3)), y=rng.standard_normal(20))
    return tmp_path


def test_text_and_json_reports(files, capsys):
    assert run("--model", "mlp:3-5-1:tanh", "--checkpoint", str(files / "w.pt"),
               "--data", str(files / "d.npz")) == 0
    out = capsys.readouterr().out
    assert out.startswith("Verdict: ") and "Hessian eigenvalues" in out
    assert run("--model", "mlp:3-5-1:tanh", "--checkpoint", str(files / "w.pt"),
               "--data", str(files / "d.npz"), "--format", "json", "--k", "2") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_params"] == 26 and report["num_examples"] == 20
    assert len(report["eigenvalues_largest"]) == 2


def test_state_dict_of_the_same_sequential_loads(files):
    model = build_mlp("mlp:3-5-1:tanh")
    model.load_state_dict(torch.load(files / "w.pt", weights_only=True))
    assert [type(m) for m in model] == [nn.Linear, nn.Tanh, nn.Linear]


def test_cross_entropy_and_module_function(files, capsys, monkeypatch):
    (files / "mymodels.py").write_text(
        "from torch import nn\n\n"
        "def build():\n"
        "    return nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4))\n")
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4))
    torch.save(model.state_dict(), files / "c.pt")
    np.savez(files / "c.npz", x=np.random.default_rng(1).standard_normal((30, 3)),
             y=np.arange(30) % 4)
    monkeypatch.chdir(files)
    assert run("--model", "mymodels:build", "--checkpoint", "c.pt", "--data", "c.npz",
               "--loss", "cross-entropy", "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_params"] == 3 * 6 + 6 + 6 * 4 + 4
    assert "2" not in report["dead_units"] and "1" in report["dead_units"]


def _save(path, obj):
    torch.save(obj, path)
    return str(path)


def _text(path):
    path.write_text("x,y\n1,2\n")
    return str(path)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


BAD = {
    "malformed spec": lambda d: ("mlp:3-5-1", "w.pt", "d.npz", "mse", "malformed model spec"),
    "bad widths": lambda d: ("mlp:3-x-1:tanh", "w.pt", "d.npz", "mse", "malformed layer widths"),
    "one width": lambda d: ("mlp:3:tanh", "w.pt", "d.npz", "mse", "at least two"),
    "unknown activation": lambda d: ("mlp:3-5-1:swish", "w.pt", "d.npz", "mse",
                                     "unknown activation 'swish'"),
    "not a spec": lambda d: ("resnet", "w.pt", "d.npz", "mse", "malformed model spec"),
    "missing module": lambda d: ("no_such_module_xyz:build", "w.pt", "d.npz", "mse",
                                 "cannot import module"),
    "missing function": lambda d: ("json:no_such_function", "w.pt", "d.npz", "mse",
                                   "has no function"),
    "missing checkpoint": lambda d: ("mlp:3-5-1:tanh", "nope.pt", "d.npz", "mse",
                                     "checkpoint not found"),
    "not a state dict": lambda d: ("mlp:3-5-1:tanh", _save(d / "t.pt", torch.zeros(3)),
                                   "d.npz", "mse", "is not a state dict"),
    "pickled object": lambda d: ("mlp:3-5-1:tanh",
                                 _save(d / "o.pt", {"a": argparse.Namespace(b=1)}),
                                 "d.npz", "mse", "as weights only"),
    "text checkpoint": lambda d: ("mlp:3-5-1:tanh", _text(d / "t.txt"), "d.npz", "mse",
                                  "not a file written by torch.save"),
    "wrong keys": lambda d: ("mlp:3-5-1:relu", _save(d / "k.pt", {"w": torch.zeros(1)}),
                             "d.npz", "mse", "missing keys"),
    "wrong shapes": lambda d: ("mlp:3-4-1:tanh", "w.pt", "d.npz", "mse", "shapes"),
    "nan weights": lambda d: ("mlp:3-5-1:tanh", _save(d / "n.pt", {
        k: v * float("nan") for k, v in build_mlp("mlp:3-5-1:tanh").state_dict().items()}),
        "d.npz", "mse", "NaN or inf"),
    "missing data": lambda d: ("mlp:3-5-1:tanh", "w.pt", "none.npz", "mse",
                               "data file not found"),
    "not npz": lambda d: ("mlp:3-5-1:tanh", "w.pt", _text(d / "t.npz"), "mse",
                          "cannot read data file"),
    "missing y": lambda d: ("mlp:3-5-1:tanh", "w.pt", _npz(d / "m.npz", x=np.zeros((4, 3))),
                            "mse", "lacks array(s) y"),
    "nan x": lambda d: ("mlp:3-5-1:tanh", "w.pt", _npz(d / "nx.npz", x=np.full((4, 3), np.nan),
                                                       y=np.zeros(4)), "mse", "NaN or inf"),
    "inf y": lambda d: ("mlp:3-5-1:tanh", "w.pt", _npz(d / "iy.npz", x=np.zeros((4, 3)),
                                                       y=np.array([0, 1, np.inf, 0])),
                        "mse", "NaN or inf"),
    "length mismatch": lambda d: ("mlp:3-5-1:tanh", "w.pt", _npz(
        d / "l.npz", x=np.zeros((4, 3)), y=np.zeros(5)), "mse", "disagree"),
    "x 1-d": lambda d: ("mlp:3-5-1:tanh", "w.pt", _npz(d / "x1.npz", x=np.zeros(4),
                                                       y=np.zeros(4)), "mse", "[N, features]"),
    "x wrong features": lambda d: ("mlp:3-5-1:tanh", "w.pt", _npz(
        d / "xf.npz", x=np.zeros((4, 7)), y=np.zeros(4)), "mse", "cannot take x of shape"),
    "y wrong outputs": lambda d: ("mlp:3-5-1:tanh", "w.pt", _npz(
        d / "yo.npz", x=np.zeros((4, 3)), y=np.zeros((4, 2))), "mse", "model outputs"),
    "string y": lambda d: ("mlp:3-5-1:tanh", "w.pt", _npz(
        d / "s.npz", x=np.zeros((4, 3)), y=np.array(["a", "b", "c", "d"])), "mse",
        "expected numbers"),
    "float labels": lambda d: ("mlp:3-5-1:tanh", "w.pt", "d.npz", "cross-entropy",
                               "integer class labels"),
    "label too large": lambda d: ("mlp:3-5-1:tanh", "w.pt", _npz(
        d / "lab.npz", x=np.zeros((4, 3)), y=np.array([0, 1, 2, 3])), "cross-entropy",
        "class label 3"),
    "unknown loss": lambda d: ("mlp:3-5-1:tanh", "w.pt", "d.npz", "hinge", "unknown loss"),
    "export program with spec": lambda d: ("mlp:3-5-1:tanh", "model.pt2", "d.npz", "mse",
                                           "leave out --model"),
    "missing export program": lambda d: ("", "model.pt2", "d.npz", "mse",
                                         "checkpoint not found"),
    "bad export program": lambda d: ("", _text(d / "bad.pt2"), "d.npz", "mse",
                                     "cannot load torch.export program"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gives_one_clear_line(files, case, monkeypatch):
    monkeypatch.chdir(files)
    spec, ckpt, data, loss, expected = BAD[case](files)
    with pytest.raises(UsageError) as info:
        run("--model", spec, "--checkpoint", ckpt, "--data", data, "--loss", loss)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def _lightning(path, prefix="model."):
    """A checkpoint as Lightning writes it (plain types only, so weights_only loads it)."""
    state = torch.load(path.parent / "w.pt", weights_only=True)
    return {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
            "state_dict": {prefix + k: v for k, v in state.items()},
            "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 4}}}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}],
            "lr_schedulers": []}


CHECKPOINTS = {
    "lightning .ckpt, prefix model.": lambda d: _lightning(d / "w.pt"),
    "lightning .ckpt, no prefix": lambda d: _lightning(d / "w.pt", prefix=""),
    "lightning .ckpt, prefix net.module.": lambda d: _lightning(d / "w.pt", "net.module."),
    "DataParallel state dict, prefix module.": lambda d: {
        "module." + k: v for k, v in torch.load(d / "w.pt", weights_only=True).items()},
    "{'model': state_dict, ...}": lambda d: {
        "model": torch.load(d / "w.pt", weights_only=True), "epoch": 7,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1, 2, 3]}]}},
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_checkpoints_people_save_load_with_weights_only(files, case, capsys, monkeypatch):
    monkeypatch.chdir(files)
    torch.save(CHECKPOINTS[case](files), files / "c.ckpt")
    argv = ("--model", "mlp:3-5-1:tanh", "--data", "d.npz", "--format", "json", "--k", "2")
    assert run(*argv, "--checkpoint", "c.ckpt") == 0
    got = json.loads(capsys.readouterr().out)
    assert run(*argv, "--checkpoint", "w.pt") == 0
    plain = json.loads(capsys.readouterr().out)
    assert got["loss"] == plain["loss"] and got["param_norm"] == plain["param_norm"]


BAD_CHECKPOINTS = {
    "dict without a state dict": (lambda d: {"epoch": 3, "weights": [1.0, 2.0]},
                                  "a dict without a state dict: it has keys 'epoch', 'weights'"),
    "empty dict": (lambda d: {}, "it has keys none (it is empty)"),
    "lightning of another model": (
        lambda d: {"state_dict": {"encoder.conv.weight": torch.zeros(2, 2)}, "epoch": 1},
        "the keys of its 'state_dict' (encoder.conv.weight, ...) match none of the model's "
        "(0.weight, 0.bias, 2.weight, 2.bias, ...)"),
    "lightning missing a key": (
        lambda d: {"state_dict": {k: v for k, v in _lightning(d / "w.pt")["state_dict"].items()
                                  if k != "model.2.bias"}},
        "missing keys ['2.bias'], unexpected keys none"),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_unrecognised_checkpoints_say_what_they_hold(files, case, monkeypatch):
    monkeypatch.chdir(files)
    make, expected = BAD_CHECKPOINTS[case]
    torch.save(make(files), files / "bad.ckpt")
    with pytest.raises(UsageError) as info:
        run("--model", "mlp:3-5-1:tanh", "--checkpoint", "bad.ckpt", "--data", "d.npz")
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_method_and_problem_of_a_saved_model(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    argv = ("--model", "mlp:3-5-1:tanh", "--checkpoint", "w.pt", "--data", "d.npz",
            "--format", "json")
    assert run(*argv, "--method", "adam:lr=0.01", "--problem", "xor", "--quiet") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"].startswith("adam:") and report["problem"] == "xor"
    for f in report["findings"]:
        assert 'base="adam"' not in f["setting"]
    for bad, expected in ((("--problem", "xorr"), "unknown lab problem 'xorr'"),
                          (("--method", "adamm"), "--method adamm: Unknown method")):
        with pytest.raises(UsageError, match=expected):
            run(*argv, *bad)


def test_pickled_data_is_refused(files, monkeypatch):
    monkeypatch.chdir(files)
    np.savez(files / "p.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(UsageError, match="without pickle"):
        run("--model", "mlp:3-5-1:tanh", "--checkpoint", "w.pt", "--data", "p.npz")


def test_model_is_required(files, monkeypatch):
    monkeypatch.chdir(files)
    with pytest.raises(UsageError, match="--model is required"):
        run("--checkpoint", "w.pt", "--data", "d.npz")


def test_torch_export_program(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (torch.randn(4, 3),), dynamic_shapes=({0: batch},))
    torch.export.save(program, files / "m.pt2")
    assert run("--checkpoint", "m.pt2", "--data", "d.npz", "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    # the same numbers as from the state dict of the same weights
    assert run("--model", "mlp:3-5-1:tanh", "--checkpoint", "w.pt", "--data", "d.npz",
               "--format", "json") == 0
    same = json.loads(capsys.readouterr().out)
    assert report["num_params"] == same["num_params"] == 26
    assert report["loss"] == pytest.approx(same["loss"], rel=1e-12)
    assert report["eigenvalues_largest"] == pytest.approx(same["eigenvalues_largest"], rel=1e-6)


# ------------------------------------------------------------------ --db / --run: stored runs


def main_json(capsys, *argv: str) -> dict:
    from synaprune.cli import main

    assert main(["diagnose", *argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A real tiny sweep: xor, gd, seeds 0 and 1, 50 steps, plus one exact teacher-student run."""
    from synaprune.bench import ResultStore, get_method, sweep
    from synaprune.problems import get_problem

    db = tmp_path_factory.mktemp("lab") / "results.db"
    with ResultStore(db) as store:
        sweep(get_problem("xor"), get_method("gd:lr=2"), [0, 1], 50, store)
        sweep(get_problem("teacher-student:k=2"), get_method("gd:lr=0.1"), [0], 5, store)
        rows = store.rows(["xor"])
        exact = store.rows(["teacher-student"])[0]["id"]
    return db, rows, exact


def test_stored_run_gives_the_numbers_of_a_direct_diagnosis(lab, capsys):
    from synaprune.bench import ResultStore
    from synaprune.diagnose import diagnose
    from synaprune.problems import get_problem

    db, rows, _ = lab
    assert len(rows) == 2
    for row in rows:
        report = main_json(capsys, "--db", str(db), "--run", str(row["id"]))
        # the same model and data by hand
        problem = get_problem(row["problem"])
        model = problem.build_model(row["seed"])
        start = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
        with ResultStore(db, readonly=True) as store:
            model.load_state_dict(store.load_params(row["id"]))
        end = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
        # the history is the run's stored curve, with ||theta|| at the start and the end
        history = {"step": [p[0] for p in row["curve"]], "loss": [p[1] for p in row["curve"]],
                   "grad_norm": [p[2] for p in row["curve"]], "param_norm": [start, end]}
        direct = diagnose(model, problem.loss_fn, problem.data("train"), k=5, seed=0,
                          history=history, method=row["method"], problem="xor")
        assert report["history"] == pytest.approx(direct.history, rel=1e-12)
        assert report["history"]["param_norm_first"] == pytest.approx(start, rel=1e-12)
        assert report["history"]["grad_norm_last"] == pytest.approx(row["final_grad_norm"])
        assert report["kind"] == direct.kind
        assert report["num_params"] == direct.num_params == 9
        assert report["num_examples"] == direct.num_examples == 4
        for key in ("loss", "grad_norm", "param_norm", "relative_grad", "ghg", "gg",
                    "cancellation", "relative_curvature"):
            assert report[key] == pytest.approx(getattr(direct, key), rel=1e-12), key
        assert report["eigenvalues_smallest"] == pytest.approx(direct.eigenvalues_smallest,
                                                               rel=1e-10)
        assert report["eigenvalues_largest"] == pytest.approx(direct.eigenvalues_largest,
                                                              rel=1e-10)
        assert [f["code"] for f in report["findings"]] == direct.codes()
        # the stored parameters are the run's final point: its recorded loss and gradient norm
        assert report["loss"] == pytest.approx(row["final_loss"], rel=1e-10)
        assert report["grad_norm"] == pytest.approx(row["final_grad_norm"], rel=1e-8)
        assert len(report["notes"]) == 1 and "parameter norm only at the start" in (
            report["notes"][0])
        assert report["method"] == row["method"] and report["problem"] == "xor"
        assert report["run"] == {
            "id": row["id"], "db": str(db), "problem": "xor:hidden=2,symmetric=False",
            "method": row["method"],
            "seed": row["seed"], "budget": 50, "status": row["status"], "steps": row["steps"],
            "final_loss": row["final_loss"], "final_grad_norm": row["final_grad_norm"]}


def test_readme_stuck_xor_run_is_a_minimum_at_infinity(tmp_path, capsys):
    """The README's example: xor, gd lr=2, seed 13, 3000 steps, stuck at 0.126."""
    from synaprune.bench import ResultStore, get_method, sweep
    from synaprune.problems import get_problem

    db = tmp_path / "results.db"
    with ResultStore(db) as store:
        sweep(get_problem("xor"), get_method("gd:lr=2"), [13], 3000, store)
        row = store.rows()[0]
    assert row["final_loss"] == pytest.approx(0.1259, abs=1e-3)
    report = main_json(capsys, "--db", str(db), "--run", str(row["id"]))
    assert report["kind"] == "minimum at infinity"
    codes = [f["code"] for f in report["findings"]]
    assert "saturated-units" in codes and "minimum-at-infinity" in codes
    for f in report["findings"]:
        assert "aggregation=" not in f["setting"], f["code"]  # mechanism A hurts on xor
    assert report["history"]["param_norm_ratio"] > 10


def test_method_or_problem_with_a_stored_run_is_refused(lab, capsys):
    from synaprune.cli import main

    db, rows, _ = lab
    assert main(["diagnose", "--db", str(db), "--run", str(rows[0]["id"]), "--problem",
                 "xor"]) == 2
    assert "--problem does not apply to --db/--run" in capsys.readouterr().err


def test_stored_run_text_report_says_which_run(lab, capsys):
    from synaprune.cli import main

    db, rows, _ = lab
    row = rows[1]
    assert main(["diagnose", "--db", str(db), "--run", str(row["id"]), "--k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"Run {row['id']} of {db}: problem xor:hidden=2,symmetric=False, "
                      f"method {row['method']}, seed {row['seed']}")
    assert out[1].startswith(f"  status {row['status']} after {row['steps']} of 50 steps, "
                             f"final loss {row['final_loss']:.6g}, final gradient norm ")
    assert out[2].startswith("Verdict: ")


def _db_with(tmp_path, name, edit):
    """A copy of the lab's first run in a new database, changed by ``edit(result)``."""
    from synaprune.bench import ResultStore, get_method, run_seeds
    from synaprune.problems import get_problem

    problem, method = get_problem("xor"), get_method("gd:lr=2")
    result = run_seeds(problem, method, [0], 5)[0]
    db = tmp_path / name
    with ResultStore(db) as store:
        store.write(problem, method, 5, [edit(result)])
    return str(db)


def _replace(**changes):
    import dataclasses

    return lambda r: dataclasses.replace(r, **changes)


def _params(**changes):
    def edit(r):
        params = {**r.params, **changes}
        return _replace(params={k: v for k, v in params.items() if v is not None})(r)
    return edit


def _sqlite_without_runs(tmp_path):
    import sqlite3

    conn = sqlite3.connect(tmp_path / "other.db")
    with conn:
        conn.execute("CREATE TABLE things (a INTEGER)")
    conn.close()
    return str(tmp_path / "other.db")


def _corrupt_params(tmp_path):
    import sqlite3

    db = _db_with(tmp_path, "corrupt.db", lambda r: r)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE runs SET params = x'00010203'")
    conn.close()
    return db


STORED_BAD = {
    "db without run": lambda d, lab: (["--db", str(lab[0])], "--db needs --run ID"),
    "run without db": lambda d, lab: (["--run", "1"], "--run needs --db"),
    "run id not a number": lambda d, lab: (["--db", str(lab[0]), "--run", "seven"],
                                           "--run must be an integer run id, got 'seven'"),
    "unknown run id": lambda d, lab: (["--db", str(lab[0]), "--run", "999"],
                                      "No run with id 999"),
    "missing database": lambda d, lab: (["--db", str(d / "none.db"), "--run", "1"],
                                        "no such file"),
    "not sqlite": lambda d, lab: (["--db", _text(d / "junk.db"), "--run", "1"],
                                  "cannot read database"),
    "sqlite but not results": lambda d, lab: (["--db", _sqlite_without_runs(d), "--run", "1"],
                                              "is not a results database"),
    "with --checkpoint": lambda d, lab: (["--db", str(lab[0]), "--run", "1", "--checkpoint",
                                          "w.pt"], "exclude each other"),
    "with --model and --data": lambda d, lab: (
        ["--run", "1", "--model", "mlp:2-2-1:tanh", "--data", "d.npz"], "exclude each other"),
    "with --loss": lambda d, lab: (["--db", str(lab[0]), "--run", "1", "--loss", "mse"],
                                   "--loss does not apply"),
    "neither": lambda d, lab: ([], "nothing to diagnose"),
    "exact loss": lambda d, lab: (["--db", str(lab[0]), "--run", str(lab[2])],
                                  "whose loss is exact"),
    "wrong shapes": lambda d, lab: (["--db", _db_with(d, "s.db", _params(
        **{"0.weight": torch.zeros(3, 2, dtype=torch.float64)})), "--run", "1"],
        "does not match the model of xor:hidden=2,symmetric=False: shapes"),
    "missing parameter": lambda d, lab: (["--db", _db_with(d, "m.db", _params(
        **{"2.bias": None})), "--run", "1"], "missing keys ['2.bias']"),
    "extra parameter": lambda d, lab: (["--db", _db_with(d, "e.db", _params(
        extra=torch.zeros(1, dtype=torch.float64))), "--run", "1"],
        "unexpected keys ['extra']"),
    "diverged run": lambda d, lab: (["--db", _db_with(d, "dv.db", _replace(
        status="diverged", success=False, final_loss=float("nan"))), "--run", "1"],
        "run 1 diverged"),
    "unreadable parameters": lambda d, lab: (["--db", _corrupt_params(d), "--run", "1"],
                                             "cannot read the stored parameters of run 1"),
}


@pytest.mark.parametrize("case", list(STORED_BAD))
def test_stored_run_bad_input_is_one_line_exit_2(tmp_path, lab, case, capsys, monkeypatch):
    from synaprune.cli import main

    monkeypatch.chdir(tmp_path)
    argv, expected = STORED_BAD[case](tmp_path, lab)
    capsys.readouterr()
    assert main(["diagnose", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("synaprune diagnose: error: ")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert expected in captured.err
