"""TrainingMonitor: the schedule, and each record against direct computation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from cases import DT, F, dense_hessian, mlp, per_example_grads, regression
from torch import nn

from synaprune import SynaPrune
from synaprune.diagnose import TrainingMonitor, every, never, read_jsonl
from synaprune.probes import PerExampleGradStats


def test_every_schedule():
    assert [t for t in range(25) if every(10)(t)] == [0, 10, 20]
    assert [t for t in range(12) if every(3, start=2)(t)] == [2, 5, 8, 11]
    assert [t for t in range(5) if every(1)(t)] == [0, 1, 2, 3, 4]
    assert not any(never(t) for t in range(100))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            every(bad)


def _train(tmp_path, *, probe: bool, reduction: str = "mean", steps: int = 6, schedule=None):
    x, y = regression(n=32)
    model = mlp([4, 5, 1], nn.Tanh)
    if probe:
        PerExampleGradStats(model, reduction=reduction)
    opt = SynaPrune(model.parameters(), lr=0.05, aggregation="rms" if probe else "mean")
    loss_fn = F.mse_loss if reduction == "mean" else (
        lambda out, t: F.mse_loss(out, t, reduction="sum"))
    mon = TrainingMonitor(model, tmp_path / "run" / "m.jsonl", loss_fn=F.mse_loss,
                          schedule=schedule or every(3), k=2)
    checks = []
    for step in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        rec = mon.record(step, loss, batch=(x, y))
        # direct references at this point, before the step
        gi = per_example_grads(model, F.mse_loss, x, y)
        h = dense_hessian(model, F.mse_loss, x, y) if every(3)(step) else None
        checks.append((step, float(loss.detach()), rec, gi, h))
        # restore the gradients the per-example loop cleared, then step
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    mon.close()
    return mon, checks, model


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_records_match_direct_computation(tmp_path, reduction):
    _, checks, model = _train(tmp_path, probe=True, reduction=reduction)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    for _, loss, rec, gi, h in checks:
        gbar = gi.mean(0)
        assert rec["loss"] == loss
        assert rec["grad_norm"] == pytest.approx(float(gbar.norm()) * (32 if reduction == "sum"
                                                                       else 1), rel=1e-10)
        scale = 32 if reduction == "sum" else 1
        for name, part in zip(names, gbar.split(sizes), strict=True):
            assert rec[f"grad_norm/{name}"] == pytest.approx(float(part.norm()) * scale,
                                                             rel=1e-10)
        ref = float(gbar.norm()) / math.sqrt(float(gi.pow(2).sum(1).mean()))
        assert rec["cancellation"] == pytest.approx(ref, rel=1e-8)
        r = gi.pow(2).mean(0).sqrt()
        c = torch.where(r == 0, torch.ones_like(r), gbar.abs() / r)
        assert rec["cancelled_share"] == pytest.approx(float((c < 0.1).double().mean()))
        if h is None:
            assert "ghg" not in rec
            continue
        eig = torch.linalg.eigvalsh(h)
        assert rec["gg"] == pytest.approx(float(gbar @ gbar), rel=1e-8)
        assert rec["ghg"] == pytest.approx(float(gbar @ h @ gbar), rel=1e-6)
        assert rec["curvature"] == pytest.approx(rec["ghg"] / rec["gg"])
        tol = 1e-5 * float(eig.abs().max())
        assert [rec["eig_min_0"], rec["eig_min_1"]] == pytest.approx(eig[:2].tolist(), abs=tol)
        assert [rec["eig_max_0"], rec["eig_max_1"]] == pytest.approx(eig[-2:].tolist(), abs=tol)
        assert rec["lanczos_converged"] == 1.0


def test_schedule_decides_the_expensive_steps(tmp_path):
    mon, _, _ = _train(tmp_path, probe=False, steps=7, schedule=every(3, start=1))
    assert [s for s, r in mon.records.items() if "ghg" in r] == [1, 4]
    assert all("cancellation" not in r for r in mon.records.values())  # no per-example stats
    steps, values = mon.series("grad_norm")
    assert steps == list(range(7)) and values == [mon.records[s]["grad_norm"] for s in steps]
    assert mon.history()["loss"] == [mon.records[s]["loss"] for s in range(7)]


def test_jsonl_holds_the_same_plain_floats_and_appends(tmp_path):
    mon, _, _ = _train(tmp_path, probe=True, steps=4)
    path = tmp_path / "run" / "m.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    for line, step in zip(lines, range(4), strict=True):
        obj = json.loads(line)
        assert obj.pop("step") == step
        assert obj == mon.records[step]
        assert all(isinstance(v, float) for v in obj.values())
    # a second monitor appends; a truncated last line (a crash mid-write) is skipped
    model = mlp([4, 5, 1], nn.Tanh)
    with TrainingMonitor(model, path) as again:
        x, y = regression(n=8)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        again.record(10, loss)
    with open(path, "a") as fh:
        fh.write('{"step": 11, "loss": 0.')
    back = read_jsonl(path)
    assert sorted(back) == [0, 1, 2, 3, 10]
    assert back[2] == mon.records[2]


def test_flushes_every_record(tmp_path):
    model = mlp([4, 5, 1], nn.Tanh)
    mon = TrainingMonitor(model, tmp_path / "f.jsonl")
    x, y = regression(n=8)
    loss = F.mse_loss(model(x), y)
    loss.backward()
    mon.record(0, loss)
    assert (tmp_path / "f.jsonl").read_text().count("\n") == 1  # visible before close()
    mon.close()


def test_non_finite_values_become_null(tmp_path):
    model = mlp([4, 5, 1], nn.Tanh)
    mon = TrainingMonitor(model, tmp_path / "n.jsonl")
    x, y = regression(n=8)
    F.mse_loss(model(x), y).backward()
    mon.record(0, float("nan"))
    mon.close()
    assert json.loads((tmp_path / "n.jsonl").read_text())["loss"] is None
    assert math.isnan(mon.records[0]["loss"])


def test_validation():
    model = nn.Linear(2, 1).to(DT)
    with pytest.raises(ValueError):
        TrainingMonitor(model, None, schedule=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TrainingMonitor(model, None, k=0)
    mon = TrainingMonitor(model, None, schedule=every(1))
    x, y = torch.randn(4, 2, dtype=DT), torch.randn(4, 1, dtype=DT)
    loss = F.mse_loss(model(x), y)
    loss.backward()
    with pytest.raises(ValueError, match="loss_fn"):
        mon.record(0, loss, batch=(x, y))


def test_large_parameters_share_is_sampled_and_close():
    from synaprune.diagnose.monitor import CANCEL_SAMPLE
    from synaprune.optim import cancellation

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 100, generator=g, dtype=DT)
    y = torch.randn(64, 1, generator=g, dtype=DT)
    model = mlp([100, 100, 1], nn.Tanh)
    assert model[0].weight.numel() > CANCEL_SAMPLE
    PerExampleGradStats(model)
    F.mse_loss(model(x), y).backward()
    rec = TrainingMonitor(model).cheap(0.0)
    params = list(model.parameters())
    c = torch.cat([cancellation(p.grad, p.grad_sumsq, 64).reshape(-1) for p in params])
    exact = float((c < 0.1).double().mean())
    assert 0.02 < exact < 0.98
    assert rec["cancelled_share"] == pytest.approx(exact, abs=0.03)
    gbar_sq = sum(float(p.grad.pow(2).sum()) for p in params)
    sumsq = sum(float(p.grad_sumsq.sum()) for p in params)
    assert rec["cancellation"] == pytest.approx(math.sqrt(gbar_sq / (sumsq / 64)), rel=1e-10)


def test_monitor_history_feeds_diagnose(tmp_path):
    from synaprune.diagnose import diagnose

    mon, _, model = _train(tmp_path, probe=False, steps=5)
    x, y = regression(n=32)
    d = diagnose(model, F.mse_loss, (x, y), history=mon.history(), k=2)
    _, norms = mon.series("grad_norm")
    assert d.history["grad_norm_first"] == norms[0]
    assert d.history["grad_norm_ratio"] == pytest.approx(norms[-1] / norms[0])
