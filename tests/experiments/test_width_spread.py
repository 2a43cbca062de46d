"""width-spread: the stacked-seed GD equals one ordinary run per seed; the quick version."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from synaprune.experiments import width_spread as exp


def test_stacked_seeds_equal_separate_runs_with_torch_optim():
    cell = {"width": 3, "first_seed": 5, "seeds": 2, "examples": 40, "steps": 25, "lr": 0.7}
    result = exp.run_cell(cell)
    x, y = exp._data(40)
    for i, seed in enumerate([5, 6]):
        g = torch.Generator().manual_seed(seed)
        model = nn.Sequential(nn.Linear(64, 3), nn.Tanh(), nn.Linear(3, 10)).double()
        with torch.no_grad():  # the same draws in the same order as the experiment's init
            for p, fan_in in zip(model.parameters(), (64, 64, 3, 3), strict=True):
                p.copy_((2 * torch.rand(p.shape, generator=g, dtype=torch.float64) - 1)
                        / math.sqrt(fan_in))
        opt = torch.optim.SGD(model.parameters(), lr=0.7)
        for _ in range(25):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        with torch.no_grad():
            ref = nn.functional.mse_loss(model(x), y).item()
        # Same arithmetic in another order (einsum over stacked seeds): rounding level.
        assert result[f"loss_{i}"] == pytest.approx(ref, rel=1e-12)
        assert result[f"steps_{i}"] == 25


def test_bootstrap_interval_of_the_mean_covers_the_normal_interval():
    values = np.random.default_rng(1).normal(size=400)
    low, high = exp.bootstrap_interval([values], lambda a: a.mean(axis=-1))
    half = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    # Percentile bootstrap of a mean of 400 normals: within 10% of the normal interval's ends.
    assert low == pytest.approx(values.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(values.mean() + half, abs=0.1 * half)


def test_quick_version(tmp_path):
    rows = [{**c, **exp.run_cell(c)} for c in exp.cells(quick=True)]
    summary = exp.summarize(rows)
    for entry in summary["table"]:
        losses = [r[f"loss_{i}"] for r in rows if r["width"] == entry["width"]
                  for i in range(r["seeds"])]
        assert entry["std"] == pytest.approx(np.std(losses, ddof=1), rel=1e-12)
        assert entry["std_low"] <= entry["std"] <= entry["std_high"]
    table = {t["width"]: t for t in summary["table"]}
    assert summary["ratio"] == pytest.approx(table[16]["std"] / table[1]["std"], rel=1e-12)
    assert summary["held"] == (summary["ratio_high"] < 1 or
                               (None if summary["ratio_low"] <= 1 else False))
    path = tmp_path / "fig.png"
    exp.plot(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
