"""step-size: the slope against numpy's least squares, determinism, the quick version."""

from __future__ import annotations

import math

import numpy as np
import pytest

from synaprune.experiments import step_size as exp


def test_quick_version(tmp_path):
    cells = exp.cells(quick=True)
    rows = [{**c, **exp.run_cell(c)} for c in cells]
    assert exp.run_cell(cells[0]) == {k: rows[0][k] for k in rows[0] if k not in cells[0]}
    summary = exp.summarize(rows)
    ok = [r for r in rows if r["status"] == "ok"]
    ref = np.polyfit([math.log(r["lr"]) for r in ok], [math.log(r["grad_norm"]) for r in ok], 1)
    assert summary["slope"] == pytest.approx(ref[0], rel=1e-10)  # numpy's lstsq, float64
    assert summary["slope_low"] <= summary["slope"] <= summary["slope_high"]
    for entry in summary["table"]:
        values = [r["grad_norm"] for r in ok if r["lr"] == entry["lr"]]
        assert entry["median_grad_norm"] == pytest.approx(float(np.median(values)), rel=1e-12)
    decided = {True: summary["slope_low"] > 0, False: summary["slope_high"] < 0}
    assert decided.get(summary["held"], summary["slope_low"] <= 0 <= summary["slope_high"])
    path = tmp_path / "fig.png"
    exp.plot(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("lr", [1e4, 1e300])
def test_diverged_runs_are_marked_and_left_out(lr):
    # 1e4 ends at a finite loss of thousands (every ReLU dead): diverged, not "ok".
    row = exp.run_cell({"lr": lr, "seed": 0, "steps": 20, "batch": 32})
    assert row["status"] == "diverged"
    rows = [{"lr": 0.1, "seed": 0, "steps": 20, "batch": 32,
             **exp.run_cell({"lr": 0.1, "seed": 0, "steps": 20, "batch": 32})},
            {"lr": 0.01, "seed": 0, "steps": 20, "batch": 32,
             **exp.run_cell({"lr": 0.01, "seed": 0, "steps": 20, "batch": 32})},
            {"lr": lr, "seed": 0, "steps": 20, "batch": 32, **row}]
    summary = exp.summarize(rows)
    assert "1 diverged" in summary["verdict"]
    ref = np.polyfit([math.log(0.1), math.log(0.01)],
                     [math.log(rows[0]["grad_norm"]), math.log(rows[1]["grad_norm"])], 1)
    assert summary["slope"] == pytest.approx(ref[0], rel=1e-10)
