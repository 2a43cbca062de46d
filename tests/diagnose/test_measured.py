"""The lab's measurements behind the remedies match docs/results.md, and the run's optimizer is
read correctly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from synaprune.bench import get_method, wilson_interval
from synaprune.diagnose._measured import MEASURED, measured, run_settings
from synaprune.optim import SynaPrune

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results.md"


def _tables() -> dict[tuple[str, str], tuple[int, int]]:
    """(problem name, method) -> (successes, seeds) from the tables of docs/results.md's
    "Every method on five problems"."""
    text = RESULTS.read_text().split("## Every method on five problems", 1)[1]
    out = {}
    for block in text.split("\n### ")[1:]:
        problem = block.split(":", 1)[0].strip()
        for method, s, n in re.findall(r"^\| `([a-z-]+)`[^|]*\| (\d+)/(\d+) \|", block, re.M):
            out[(problem, method)] = (int(s), int(n))
    return out


def test_table_is_the_one_in_docs_results():
    tables = _tables()
    assert tables, "docs/results.md has no method tables"
    for key, value in MEASURED.items():
        assert tables.get(key) == value, key


@pytest.mark.parametrize(("problem", "method", "effect"), [
    ("xor", "synaprune-a", "hurts"),  # 51/64 against 63/64 (the case)
    ("xor", "synaprune-b", "same"),
    ("teacher-student", "synaprune-c", "hurts"),
    ("teacher-student", "synaprune-b", "same"),
    ("spirals", "saddle-free-newton", "helps"),
    ("autoencoder", "saddle-free-newton", "helps"),
])
def test_effects_are_disjoint_wilson_intervals(problem, method, effect):
    m = measured(f"{problem}:hidden=2" if problem == "xor" else problem, method)
    assert m is not None and m.effect == effect
    low, high = wilson_interval(m.successes, m.seeds)
    glow, ghigh = wilson_interval(m.gd_successes, m.gd_seeds)
    assert (high < glow) == (effect == "hurts") and (low > ghigh) == (effect == "helps")
    assert f"{m.successes}/{m.seeds}" in m.text() and "docs/results.md" in m.text()


def test_unmeasured_pairs_give_none():
    assert measured("digits", "synaprune-a") is None
    assert measured(None, "adam") is None and measured("xor", None) is None


def test_run_settings_read_the_optimizer():
    p = [torch.zeros(2, requires_grad=True)]
    assert run_settings(None).name is None and not run_settings(None).uses("adam")
    assert run_settings(torch.optim.Adam(p)).uses("adam")
    assert run_settings(torch.optim.RMSprop(p)).uses("adam")
    assert not run_settings(torch.optim.SGD(p, lr=0.1)).uses("adam")
    blend = run_settings(SynaPrune(p, lr=0.1, aggregation="blend", blend=0.25, noise=1e-3))
    assert blend.uses("blend") and not blend.uses("rms") and blend.blend == 0.25
    assert blend.uses("noise") and not blend.uses("noise_eps")
    lab = run_settings("synaprune-ab:base=adam")
    assert lab.name == "synaprune-ab" and lab.uses("adam") and lab.uses("blend")
    assert lab.uses("noise")
    assert run_settings(get_method("synaprune-c")).penalty
    with pytest.raises(ValueError, match="method must be"):
        run_settings(3)
