"""The success-rate figure: drawn from real summaries, written atomically."""

from __future__ import annotations

from pathlib import Path

import pytest

from synaprune.bench import summarize
from synaprune.report import plot_success_rates


def _rows() -> list[dict]:
    rows = []
    for problem, method, wins in (("xor", "gd:lr=1", 3), ("xor", "adam:lr=0.1", 5),
                                  ("spirals", "gd:lr=1", 0)):
        for seed in range(5):
            ok = seed < wins
            rows.append({"problem": problem, "method": method, "budget": 100, "seed": seed,
                         "success": ok, "status": "ok" if ok else "budget",
                         "final_loss": 0.001 if ok else 0.2, "steps_to_success": 10 if ok
                         else None, "wall_time": 0.1})
    return rows


def test_plot_writes_an_image_with_a_panel_per_problem(tmp_path: Path) -> None:
    import matplotlib.image

    out = plot_success_rates(summarize(_rows()), tmp_path / "sub" / "rates.png", title="t")
    assert out == tmp_path / "sub" / "rates.png"
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert [p.name for p in out.parent.iterdir()] == ["rates.png"]  # no temporary left


def test_plot_file_has_the_umask_permissions(tmp_path: Path, umask) -> None:
    """Not mkstemp's 0600: a figure is for others to read too (0644 under umask 022)."""
    import stat

    umask(0o022)
    out = plot_success_rates(summarize(_rows()), tmp_path / "rates.png")
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    umask(0o077)
    out = plot_success_rates(summarize(_rows()), tmp_path / "rates.png")  # replaced
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_plot_refuses_nothing_and_keeps_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "rates.png"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="no runs"):
        plot_success_rates([], target)
    assert target.read_bytes() == b"old"
