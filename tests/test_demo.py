"""The main job: `synaprune demo` trains every method from the same starts and saves the plot."""

from __future__ import annotations

import stat

import torch

from synaprune.cli import main
from synaprune.demo import METHODS, make_net, run_demo


def test_symmetric_start_has_identical_hidden_units():
    net = make_net(3, symmetric=True)
    w, b, v = net[0].weight, net[0].bias, net[2].weight
    assert torch.equal(w[0], w[1]) and b[0] == b[1] and v[0, 0] == v[0, 1]
    assert not torch.equal(make_net(3, symmetric=False)[0].weight[0],
                           make_net(3, symmetric=False)[0].weight[1])


def test_demo_runs_every_method_and_plain_gd_stays_on_the_symmetric_plateau(tmp_path, capsys,
                                                                           umask):
    umask(0o022)
    plot = tmp_path / "demo.png"
    curves = run_demo(steps=300, seeds=2, plot=str(plot), progress=False)
    assert plot.stat().st_size > 0
    assert stat.S_IMODE(plot.stat().st_mode) == 0o644  # the umask's mode
    assert [p.name for p in tmp_path.iterdir()] == ["demo.png"]  # no temporary left
    for start in ("random start", "symmetric start"):
        assert set(curves[start]) == {m.name for m in METHODS}
        for runs in curves[start].values():
            assert len(runs) == 2 and all(len(r) == 300 for r in runs)
    # Gradient descent cannot split identical hidden units: no symmetric run reaches XOR.
    assert all(r[-1] > 0.1 for r in curves["symmetric start"]["sgd (momentum 0.9)"])
    assert "success" in capsys.readouterr().out


def test_cli_rejects_bad_input_with_status_2(capsys):
    assert main(["bench", "--problem", "no-such-problem", "--method", "gd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-problem" in err[0]
