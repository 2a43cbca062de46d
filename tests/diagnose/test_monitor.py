"""TrainingMonitor: the schedule, and each record against direct computation.

Cancellation is checked against a brute-force per-example loop along every path its
sum_i ||g_i||^2 can take: the default (sumsq-only) probe's grad_sumsq (summed by the monitor, as
with SynaPrune rms), a probe's grad_sqnorm_sum (reused), and the monitor's own norm-only probe
(alone, or attached before a probe that then takes over).
"""

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
from synaprune.probes import _fields as fields


def test_every_schedule():
    assert [t for t in range(25) if every(10)(t)] == [0, 10, 20]
    assert [t for t in range(12) if every(3, start=2)(t)] == [2, 5, 8, 11]
    assert [t for t in range(5) if every(1)(t)] == [0, 1, 2, 3, 4]
    assert not any(never(t) for t in range(100))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            every(bad)


# Where the monitor's per-example statistics come from, by test id:
SOURCES = {
    "probe": "a default (sumsq-only) PerExampleGradStats: grad_sumsq summed, SynaPrune rms",
    "probe_sqnorm": "a probe with sumsq and sqnorm: grad_sqnorm_sum reused, SynaPrune rms",
    "own": "cancellation=True and no probe: the monitor's norm-only probe, torch.optim.SGD",
    "own_then_probe": "cancellation=True first, then a default probe takes over, SynaPrune rms",
}


def _train(tmp_path, *, probe: bool, reduction: str = "mean", steps: int = 6, schedule=None,
           source: str | None = None):
    x, y = regression(n=32)
    model = mlp([4, 5, 1], nn.Tanh)
    source = source or ("probe" if probe else "none")
    if source in ("probe", "probe_sqnorm"):
        PerExampleGradStats(model, reduction=reduction,
                            quantities=("sumsq", "sqnorm") if source == "probe_sqnorm" else
                            ("sumsq",))
    mon = TrainingMonitor(model, tmp_path / "run" / "m.jsonl", loss_fn=F.mse_loss,
                          schedule=schedule or every(3), k=2,
                          cancellation=True if source.startswith("own") else None,
                          reduction=reduction)
    if source == "own_then_probe":
        assert mon.probe is not None
        PerExampleGradStats(model, reduction=reduction)
    if source == "own":
        opt = torch.optim.SGD(model.parameters(), lr=0.05)  # never resets the statistics
    else:
        opt = SynaPrune(model.parameters(), lr=0.05, aggregation="mean" if source == "none"
                        else "rms")
    loss_fn = F.mse_loss if reduction == "mean" else (
        lambda out, t: F.mse_loss(out, t, reduction="sum"))
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


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_records_match_direct_computation(tmp_path, reduction, source):
    _, checks, model = _train(tmp_path, probe=True, reduction=reduction, source=source)
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
        assert rec["cancellation"] == pytest.approx(ref, rel=1e-10)
        if source.startswith("own") and source != "own_then_probe":
            assert "cancelled_share" not in rec  # a norm-only probe has no per-coordinate sums
        elif h is None:
            assert "cancelled_share" not in rec  # taken on the scheduled steps only
        else:
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
    with pytest.raises(ValueError, match="Invalid cancellation"):
        TrainingMonitor(model, None, cancellation="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Invalid reduction"):
        TrainingMonitor(model, None, cancellation=True, reduction="none")
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


def test_own_probe_leaves_the_optimizer_unchanged(tmp_path):
    """The monitor's probe attached before the optimizer's stands aside: SynaPrune rms takes the
    same steps as without it (statistics not counted twice), and close() removes it."""
    runs = {}
    for source in ("probe", "own_then_probe"):
        mon, _, model = _train(tmp_path / source, probe=True, source=source, steps=4)
        runs[source] = (mon, [p.detach().clone() for p in model.parameters()])
    for a, b in zip(runs["probe"][1], runs["own_then_probe"][1], strict=True):
        assert torch.equal(a, b)
    mon = runs["own_then_probe"][0]
    assert mon.probe is not None and mon.probe._removed  # _train closed the monitor
    assert runs["probe"][0].probe is None  # the optimizer's probe was there first: none needed


def test_reused_statistics_need_no_pass_over_parameters():
    """With grad_sqnorm_sum present the cheap set reduces no parameter-sized statistic; with only
    grad_sumsq it sums it (one pass). Counted with a dispatch mode: plain reductions over a
    tensor the size of the 100 x 100 weight (the gradient norms are one _foreach_norm)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class BigReductions(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if (name in ("sum", "dot", "linalg_vector_norm", "norm") and args
                    and args[0].numel() == 100 * 100):
                self.count += 1
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 100, generator=g, dtype=DT)
    y = torch.randn(16, 1, generator=g, dtype=DT)
    counts = {}
    for quantities in [("sumsq",), ("sumsq", "sqnorm")]:
        model = mlp([100, 100, 1], nn.Tanh)
        probe = PerExampleGradStats(model, quantities=quantities)
        F.mse_loss(model(x), y).backward()
        mon = TrainingMonitor(model)
        with BigReductions() as spy:
            rec = mon.cheap(0.0)
        probe.remove()
        assert "cancellation" in rec and "cancelled_share" in rec
        counts[quantities] = spy.count
    assert counts[("sumsq", "sqnorm")] == 0
    assert counts[("sumsq",)] == 1  # model[0].weight.grad_sumsq.sum()


def test_parameters_in_different_conventions_give_the_same_record():
    """One parameter's statistics switched to the sum-reduced convention (gradient times B,
    grad_reduction "sum"): the same underlying numbers, so the same cancellation and share (this
    takes the per-coordinate factor path of cancelled_share)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 100, generator=g, dtype=DT)
    y = torch.randn(64, 1, generator=g, dtype=DT)
    model = mlp([100, 100, 1], nn.Tanh)
    PerExampleGradStats(model, quantities=("sumsq", "sqnorm"))
    F.mse_loss(model(x), y).backward()
    mon = TrainingMonitor(model, per_parameter=False)
    before = mon.cheap(0.0)
    w = model[0].weight
    sumsq, sqnorm = w.grad_sumsq, w.grad_sqnorm_sum
    w.grad.mul_(64)
    # Rewritten through their owner: a .grad rescaled behind the statistics' back would rescale
    # them too (the gradient of a loss 64 times larger).
    fields.write(w, sumsq=sumsq, sqnorm=sqnorm, batch_size=64, reduction="sum")
    after = mon.cheap(0.0)
    assert after["cancellation"] == pytest.approx(before["cancellation"], rel=1e-12)
    assert after["cancelled_share"] == pytest.approx(before["cancelled_share"], abs=1e-12)
    assert 0.0 < before["cancelled_share"] < 1.0


def test_cancellation_false_computes_neither(tmp_path):
    model = mlp([4, 5, 1], nn.Tanh)
    PerExampleGradStats(model)
    mon = TrainingMonitor(model, cancellation=False)
    x, y = regression(n=8)
    loss = F.mse_loss(model(x), y)
    loss.backward()
    rec = mon.record(0, loss)
    assert "cancellation" not in rec and "cancelled_share" not in rec
    assert mon.probe is None


def test_doctests():
    import doctest

    import synaprune.diagnose.monitor as monitor

    result = doctest.testmod(monitor, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_monitor_history_feeds_diagnose(tmp_path):
    from synaprune.diagnose import diagnose

    mon, _, model = _train(tmp_path, probe=False, steps=5)
    x, y = regression(n=32)
    d = diagnose(model, F.mse_loss, (x, y), history=mon.history(), k=2)
    _, norms = mon.series("grad_norm")
    assert d.history["grad_norm_first"] == norms[0]
    assert d.history["grad_norm_ratio"] == pytest.approx(norms[-1] / norms[0])


@pytest.mark.parametrize("divide", [True, False], ids=["loss/P", "loss"])
def test_cancellation_over_accumulated_micro_batches_is_the_whole_batch_s(tmp_path, divide):
    """Two equal micro-batches accumulated into .grad (losses divided by 2, as Lightning does, or
    not) have the cancellation of the whole batch: ||gbar|| / sqrt(mean_i ||g_i||^2) does not
    depend on how .grad was scaled (it was 2x off with the division, silently)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randn(8, 1, generator=g, dtype=torch.float64)
    values = []
    for chunks in (1, 2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
        probe = PerExampleGradStats(model)
        mon = TrainingMonitor(model, tmp_path / f"m{chunks}.jsonl", cancellation=True)
        model.zero_grad()
        for xs, ys in zip(x.chunk(chunks), y.chunk(chunks), strict=True):
            loss = nn.functional.mse_loss(model(xs), ys)
            (loss / chunks if divide else loss).backward()
        values.append(mon.record(0, loss)["cancellation"])
        mon.close()
        probe.remove()
    assert 0 < values[0] < 1
    # float64; the two micro-batches' sums run in another order than the whole batch's
    assert values[1] == pytest.approx(values[0], rel=1e-12)


def test_two_monitors_each_give_the_one_monitor_cancellation():
    """Two monitors with their own probes on one model must not count every example twice
    (both probes wrote grad_sqnorm_sum, and each monitor read a cancellation 1/sqrt(2) too
    small); the second takes over when the first is closed."""
    model = mlp([4, 6, 1], nn.Tanh)
    x, y = regression(n=12)
    gi = per_example_grads(model, F.mse_loss, x, y)
    ref = float(gi.mean(0).norm()) / math.sqrt(float(gi.pow(2).sum(1).mean()))
    first = TrainingMonitor(model, None, cancellation=True)
    second = TrainingMonitor(model, None, cancellation=True)

    def record(monitors):
        model.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return [m.record(0, loss)["cancellation"] for m in monitors]

    assert record([first, second]) == pytest.approx([ref, ref], rel=1e-10)
    first.close()
    assert record([second]) == pytest.approx([ref], rel=1e-10)
    second.close()
