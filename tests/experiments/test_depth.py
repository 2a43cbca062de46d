"""``depth --quick`` through the framework, checked against a direct construction."""

from __future__ import annotations

import itertools

import pytest

from synaprune.experiments import depth, run_experiment
from synaprune.experiments._seed003 import seed_data
from synaprune.init import add_layers, pretrain


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return run_experiment("depth", tmp_path_factory.mktemp("depth"), quick=True, progress=False)


def test_quick_run_never_raises_the_objective(quick):
    assert len(quick.rows) == len(depth.cells(True)) == 4
    assert quick.png.stat().st_size > 0 and quick.csv.stat().st_size > 0
    for row in quick.rows:
        assert row["monotone"] is True
        curve = [row[f"obj_layer_{k:03d}"] for k in depth.layer_grid(row["layers"])]
        assert all(b <= a for a, b in itertools.pairwise(curve))
        assert curve[-1] == row["final"] < row["initial"]
    assert quick.summary["monotone"] is True


def test_a_cell_matches_a_direct_construction(quick):
    row = next(r for r in quick.rows if r["width"] == 5 and r["connect_input"])
    x, y = seed_data(row["N"], row["seed"])
    shallow = pretrain(x, y, neurons=5, activation="relu", perturbations=row["perturbations"],
                       seed=20_000 + row["seed"])
    assert row["obj_layer_001"] == shallow.objective
    deep = add_layers(shallow, x, y, layers=row["layers"] - 1, width=5, connect_input=True,
                      perturbations=row["perturbations"], seed=30_000 + row["seed"])
    assert row["final"] == deep.objective and row["neurons"] == sum(deep.module.widths)
