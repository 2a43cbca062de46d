"""safran-shamir: cells, the per-cell classification, the table's arithmetic, the figure."""

from __future__ import annotations

import math

import pytest

from synaprune.bench import get_method, run_seeds, wilson_interval
from synaprune.experiments import EXPERIMENTS
from synaprune.experiments import safran_shamir as exp
from synaprune.problems import get_problem


def test_registered_with_the_papers_setup() -> None:
    assert EXPERIMENTS["safran-shamir"] is exp
    full = exp.cells(quick=False)
    assert sorted({c["k"] for c in full}) == list(range(6, 21))
    for c in full:
        assert c["lr"] == 5.0 / c["k"]  # the step 5/k
    for k in range(6, 21):  # every seed 0..n-1 once per k
        starts = sorted((c["seed_start"], c["seeds"]) for c in full if c["k"] == k)
        covered = [s for start, n in starts for s in range(start, start + n)]
        assert covered == list(range(len(covered)))
    assert exp.AUTHORS == {6: 0.0, 7: 0.054, 8: 0.114, 9: 0.222, 10: 0.32, 11: 0.474,
                           12: 0.538}


def test_run_cell_counts_every_run_once_as_the_lab_names_it() -> None:
    cell = {"k": 8, "seed_start": 0, "seeds": 12, "lr": 5 / 8, "steps": 2000, "grad_tol": 1e-6}
    row = exp.run_cell(dict(cell))
    problem = get_problem("teacher-student:k=8")
    results = run_seeds(problem, get_method("gd", lr=5 / 8), range(12), 2000,
                        until_converged=True, grad_tol=1e-6)
    kinds = [r.kind for r in results]
    for kind in exp.KINDS:
        assert row[kind] == kinds.count(kind)
    assert row["runs"] == 12 == sum(row[k] for k in exp.KINDS)
    # seeds 6 and 11 end at the k = 8 spurious value 0.02151, gradient small, Hessian positive
    assert [r.seed for r in results if r.kind == "spurious"] == [6, 11]
    assert row["spurious"] == 2 and row["min_spurious_loss"] == pytest.approx(0.02151, abs=1e-5)
    assert row["min_spurious_eig"] > 1e-3
    assert all(r.final_grad_norm <= 1e-6 for r in results if r.kind == "spurious")
    assert row["seed_steps"] == sum(r.steps for r in results)
    # a cap too short to converge: the failures are "moving", not spurious
    short = exp.run_cell({**cell, "steps": 30})
    assert short["spurious"] == 0 and short["moving"] == 12 - short["global"] > 0
    assert short["moving_seeds"].split()[0] == "0"


def _row(k: int, runs: int, spurious: int, moving: int = 0) -> dict:
    return {"k": k, "seed_start": 0, "seeds": runs, "lr": 5 / k, "steps": 100, "grad_tol": 1e-6,
            "runs": runs, "global": runs - spurious - moving, "spurious": spurious, "saddle": 0,
            "moving": moving, "unstable": 0, "diverged": 0, "seed_steps": 100 * runs,
            "train_s": 2.0,
            "classify_s": 0.5, "min_spurious_loss": 0.02 if spurious else None,
            "max_spurious_grad": None, "min_spurious_eig": 0.01 if spurious else None,
            "max_moving_grad": None, "moving_seeds": ""}


def test_summary_wilson_and_three_standard_errors_by_hand() -> None:
    # k = 8: 30/200 = 15% against 11.4% of 500: SE = sqrt(.15*.85/200 + .114*.886/500)
    # = 0.02806, |diff| = 0.036 < 3 SE: within. k = 12: 60/200 = 30% against 53.8%: outside.
    rows = [_row(8, 100, 10), _row(8, 100, 20), _row(12, 200, 60), _row(15, 50, 20, moving=3)]
    summary = exp.summarize(rows)
    by_k = {t["k"]: t for t in summary["table"]}
    assert by_k[8]["runs"] == 200 and by_k[8]["spurious_share"] == 0.15
    assert (by_k[8]["low"], by_k[8]["high"]) == wilson_interval(30, 200)
    se = math.sqrt(0.15 * 0.85 / 200 + 0.114 * 0.886 / 500)
    assert abs(0.15 - 0.114) < 3 * se and by_k[8]["within_3se"] is True
    assert by_k[12]["within_3se"] is False
    assert by_k[15]["authors"] is None and by_k[15]["within_3se"] is None
    assert summary["held"] is False
    assert "k=12: 30.0% (authors 53.8%, outside 3 SE)" in summary["verdict"]
    assert "k=15: 40.0% +3 moving" in summary["verdict"]
    assert by_k[8]["s_per_run"] == pytest.approx(4.0 / 200)
    text = exp.table_markdown(summary)
    assert "| 12 | 200 | 100 | 30.0% (60) [" in text and "**no**" in text
    assert exp.summarize([_row(8, 200, 30)])["held"] is True
    assert exp.summarize([_row(15, 50, 20)])["held"] is None


def test_plot_writes_a_png(tmp_path) -> None:
    path = tmp_path / "fig.png"
    exp.plot([_row(8, 100, 10), _row(12, 200, 60), _row(15, 50, 20, moving=3)], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
