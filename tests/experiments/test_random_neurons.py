"""``random-neurons --quick`` through the framework, its numbers checked against references."""

from __future__ import annotations

import csv
import itertools

import pytest
import torch

from synaprune.experiments import random_neurons as rn
from synaprune.experiments import run_experiment
from synaprune.experiments._seed003 import seed_data
from synaprune.init import pretrain


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return run_experiment("random-neurons", tmp_path_factory.mktemp("rn"), quick=True,
                          progress=False)


def test_quick_run_writes_one_row_per_cell_and_a_figure(quick):
    with open(quick.csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(rn.cells(True)) == len(quick.rows)
    assert quick.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert quick.summary["held"] in (True, False, None) and quick.summary["verdict"]


def test_objective_curve_is_the_pretraining_history_and_reaches_zero(quick):
    for row in quick.rows:
        curve = [row[rn._key(f)] for f in rn.FRACTIONS]
        assert all(b <= a for a, b in itertools.pairwise(curve))
        # Reference: the bias-only fit is the variance of y; the data are the seed's function.
        _x, y = seed_data(row["N"], row["seed"])
        assert curve[0] == pytest.approx(y.var(unbiased=False).item(), rel=1e-12)
        assert row["rejected"] == row["rejected_cannot_help"] + row["rejected_rounding"]
        if row["perturbations"] == 0 and row["weight_scale"] == 1.0:
            assert row["final_relative"] <= 1e-12  # as many neurons as points: exact fit


def test_a_cell_matches_a_direct_pretraining_run(quick):
    row = next(r for r in quick.rows if r["activation"] == "relu" and r["perturbations"])
    x, y = seed_data(row["N"], row["seed"])
    direct = pretrain(x, y, neurons=row["N"] - 1, activation="relu",
                      perturbations=row["perturbations"], max_tries=100,
                      seed=10_000 + row["seed"])
    assert row[rn._key(1.0)] == direct.objective
    assert row["rejected"] == direct.rejected
    with torch.no_grad():
        assert direct.objective == (direct.module(x)[:, 0] - y).square().mean().item()


def test_exact_fit_note_ignores_the_nearly_linear_small_scale_runs():
    # tanh at scale 0.01 stops near var(y) (measured: 0.117); the exact-fit note once showed it.
    rows = [{"weight_scale": 1.0, "final_relative": 1e-20, "variance": 0.2},
            {"weight_scale": 1.0, "final_relative": 3e-18, "variance": 0.1},
            {"weight_scale": 0.01, "final_relative": 0.6, "variance": 0.2}]
    assert rn.exact_fit_objective(rows) == 3e-18 * 0.1  # the same product, bit for bit
