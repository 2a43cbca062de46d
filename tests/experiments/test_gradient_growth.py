"""gradient-growth: the recorded gradient norm against a direct computation; the quick version."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from synaprune.experiments import gradient_growth as exp


def test_first_recorded_norm_is_the_minibatch_gradient_norm():
    # One epoch of length one batch: the recorded norm is ||grad|| at the initial point.
    cell = {"seed": 3, "epochs": 1, "lr": 0.0, "momentum": 0.0, "batch": 32, "shift": 0}
    row = exp.run_cell(cell)
    g = torch.Generator().manual_seed(3)
    model = exp._conv_net(g)
    x, y = exp._split("train")
    order = torch.randperm(x.shape[0], generator=g)
    norms = []
    for start in range(0, x.shape[0] - 31, 32):  # lr 0: every batch at the initial point
        idx = order[start:start + 32]
        grads = torch.autograd.grad(F.cross_entropy(model(x[idx]), y[idx]),
                                    list(model.parameters()))
        norms.append(math.sqrt(sum(float(t.square().sum()) for t in grads)))
    assert row["grad_norm_0"] == pytest.approx(sum(norms) / len(norms), rel=1e-12)
    x_val, y_val = exp._split("test")
    error = (model(x_val).argmax(dim=1) != y_val).double().mean().item()
    assert row["val_error_0"] == error


def test_quick_version(tmp_path):
    rows = [{**c, **exp.run_cell(c)} for c in exp.cells(quick=True)]
    summary = exp.summarize(rows)
    growth = [r[f"grad_norm_{r['epochs'] - 1}"] / r["grad_norm_0"] for r in rows]
    assert summary["growth"] == pytest.approx(sum(growth) / len(growth), rel=1e-12)
    assert summary["growth_low"] <= summary["growth"] <= summary["growth_high"]
    last = rows[0]["epochs"] - 1
    assert summary["final_val_error"] == pytest.approx(
        sum(r[f"val_error_{last}"] for r in rows) / len(rows), rel=1e-12)
    path = tmp_path / "fig.png"
    exp.plot(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
