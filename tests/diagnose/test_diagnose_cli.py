"""``synaprune diagnose``: parsed args on temporary files, including every bad input."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from torch import nn

from synaprune.cli import UsageError
from synaprune.diagnose.cli import add_diagnose_parser, build_mlp


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
