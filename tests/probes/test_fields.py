"""The life cycle of the statistics left on parameters: they always describe ``.grad``.

Every pattern of resetting or accumulating gradients is compared with a brute-force per-example
loop in float64 (computed before the probe is attached). Tolerances: 1e-10 relative, the
rounding of float64 sums over a handful of examples, far below any bookkeeping error (which is a
factor such as 2 or B).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synaprune import PerExampleGradStats, SynaPrune
from synaprune.diagnose import TrainingMonitor
from synaprune.probes import probes_paused

RTOL = 1e-10


class ScaleShift(nn.Module):
    """Elementwise x * scale + shift: takes the vmap fallback (statistics added at the end of
    the pass, not in the output hook)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(dim))
        self.shift = nn.Parameter(torch.randn(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), ScaleShift(5), nn.Tanh(), nn.Linear(5, 2)).double()


def _batch(b: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, generator=g, dtype=torch.float64),
            torch.randn(b, 2, generator=g, dtype=torch.float64))


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(model(x), y)  # (1/B) sum_i l_i, l_i the mean over the 2 outputs


def reference(model: nn.Module, x: Tensor, y: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per parameter (sum_i g_i, sum_i g_i**2), one example at a time."""
    params = list(model.parameters())
    out = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(_loss(model, x[i:i + 1], y[i:i + 1]), params)
        for (s, q), g in zip(out, grads, strict=True):
            s.add_(g)
            q.add_(g * g)
    return out


def close(actual: Tensor, expected: Tensor) -> bool:
    return bool((actual - expected).abs().max() <= RTOL * expected.abs().max())


def assert_stats(model: nn.Module, probe: PerExampleGradStats,
                 ref: list[tuple[Tensor, Tensor]], batch: int) -> None:
    for p, (s, q) in zip(model.parameters(), ref, strict=True):
        assert p.grad_batch_size == batch
        assert close(p.grad_sumsq, q), (p.grad_sumsq, q)
        assert close(probe.sum_grad(p), s)


# -- resets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("set_to_none", [True, False])
def test_model_zero_grad_starts_the_statistics_afresh(set_to_none):
    """Batch 6, model.zero_grad(), batch 4: the statistics are batch 4's alone (they used to keep
    accumulating: grad_batch_size 10 and a false "different batch sizes" error)."""
    model = _model()
    (x1, y1), (x2, y2) = _batch(6, 1), _batch(4, 2)
    ref = reference(model, x2, y2)
    probe = PerExampleGradStats(model)
    _loss(model, x1, y1).backward()
    model.zero_grad(set_to_none=set_to_none)
    _loss(model, x2, y2).backward()
    assert_stats(model, probe, ref, 4)
    probe.remove()


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.SGD(ps, lr=0.0),
    lambda ps: torch.optim.Adam(ps, lr=0.0),
], ids=["sgd", "adam"])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_torch_optimizer_zero_grad_starts_the_statistics_afresh(make_opt, set_to_none):
    model = _model()
    (x1, y1), (x2, y2) = _batch(6, 1), _batch(6, 2)
    ref = reference(model, x2, y2)
    probe = PerExampleGradStats(model)
    opt = make_opt(model.parameters())  # lr 0: the reference stays valid
    for x, y in ((x1, y1), (x2, y2)):
        opt.zero_grad(set_to_none=set_to_none)
        _loss(model, x, y).backward()
        opt.step()
    assert_stats(model, probe, ref, 6)
    probe.remove()


def test_synaprune_zero_grad_starts_the_statistics_afresh():
    model = _model()
    (x1, y1), (x2, y2) = _batch(6, 1), _batch(3, 2)
    ref = reference(model, x2, y2)
    probe = PerExampleGradStats(model)
    opt = SynaPrune(model.parameters(), lr=0.0, aggregation="rms")
    for x, y in ((x1, y1), (x2, y2)):
        opt.zero_grad()
        _loss(model, x, y).backward()
    assert_stats(model, probe, ref, 3)
    opt.step()
    probe.remove()


@pytest.mark.parametrize("sizes", [(3, 3), (4, 2)], ids=["equal", "unequal"])
def test_micro_batches_accumulate_exactly_when_grad_does(sizes):
    model = _model()
    x, y = _batch(sum(sizes), 1)
    parts = [(x[:sizes[0]], y[:sizes[0]]), (x[sizes[0]:], y[sizes[0]:])]
    refs = [reference(model, *part) for part in parts]
    probe = PerExampleGradStats(model)
    model.zero_grad()
    for part in parts:
        _loss(model, *part).backward()
    for p, (s1, q1), (s2, q2) in zip(model.parameters(), *refs, strict=True):
        assert p.grad_batch_size == sum(sizes)
        assert close(p.grad_sumsq, q1 + q2)
        if sizes[0] == sizes[1]:
            assert close(probe.sum_grad(p), s1 + s2)
        else:  # a real mix of batch sizes under a mean-reduced loss: refused, truthfully
            with pytest.raises(RuntimeError, match="different batch sizes"):
                probe.sum_grad(p)
    probe.remove()


def test_rms_steps_after_model_zero_grad_match_the_reference():
    """The optimizer's r is the current batch's (it was 21x off after model.zero_grad())."""
    lr = 0.01
    model = _model()
    probe = PerExampleGradStats(model)
    opt = SynaPrune(model.parameters(), lr=lr, aggregation="rms")
    for step in range(3):
        x, y = _batch(6, 10 + step)
        ref = reference(model, x, y)
        before = [p.detach().clone() for p in model.parameters()]
        model.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
        for p, b, (s, q) in zip(model.parameters(), before, ref, strict=True):
            expected = b - lr * torch.sign(s) * (q / 6).sqrt()
            assert close(p.detach() - b, expected - b)
    probe.remove()


# -- changes of .grad the statistics follow, and those they cannot -----------------------------


def test_rescaled_grad_between_micro_batches_rescales_the_first_micro_batch():
    """Clipping (a multiplication of .grad) between two micro-batches multiplies the first
    micro-batch's per-example gradients: sum_i g_i**2 = k**2 q1 + q2."""
    model = _model()
    (x1, y1), (x2, y2) = _batch(3, 1), _batch(3, 2)
    r1, r2 = reference(model, x1, y1), reference(model, x2, y2)
    probe = PerExampleGradStats(model)
    _loss(model, x1, y1).backward()
    for p in model.parameters():
        p.grad.mul_(0.3)
    _loss(model, x2, y2).backward()
    for p, (s1, q1), (s2, q2) in zip(model.parameters(), r1, r2, strict=True):
        assert close(p.grad, (0.3 * s1 + s2) / 3)
        assert close(p.grad_sumsq, 0.09 * q1 + q2)
        assert close(probe.sum_grad(p), 0.3 * s1 + s2)
    probe.remove()


def test_grad_changed_between_micro_batches_otherwise_is_refused_at_step():
    model = _model()
    probe = PerExampleGradStats(model)
    opt = SynaPrune(model.parameters(), lr=0.01, aggregation="rms")
    _loss(model, *_batch(3, 1)).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.grad.add_(p, alpha=1e-2)  # weight decay by hand
    _loss(model, *_batch(3, 2)).backward()
    with pytest.raises(RuntimeError, match="changed between two recorded backward passes"):
        opt.step()
    probe.remove()


def test_grad_changed_after_backward_otherwise_is_refused_at_step():
    model = _model()
    probe = PerExampleGradStats(model)
    opt = SynaPrune(model.parameters(), lr=0.01, aggregation="blend", blend=0.5)
    _loss(model, *_batch(6, 1)).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.grad.add_(p, alpha=1e-2)
    with pytest.raises(RuntimeError, match="not by a rescaling"):
        opt.step()
    probe.remove()


def test_gradient_no_recorded_pass_produced_is_kept_apart():
    """A backward pass while probes are paused (e.g. a penalty of one's own), then the data loss:
    the statistics are the data loss's, and rms aggregates the data gradient alone."""
    lr = 0.01
    model = _model()
    x, y = _batch(6, 1)
    ref = reference(model, x, y)
    extra_loss = lambda: 0.5 * sum(p.square().sum() for p in model.parameters())  # noqa: E731
    expected_extra = [p.detach().clone() for p in model.parameters()]  # its gradient
    probe = PerExampleGradStats(model)
    opt = SynaPrune(model.parameters(), lr=lr, aggregation="rms")
    before = [p.detach().clone() for p in model.parameters()]
    with probes_paused():
        extra_loss().backward()
    _loss(model, x, y).backward()
    for p, e in zip(model.parameters(), expected_extra, strict=True):
        assert close(p.grad_extra, e)
    opt.step()
    for p, b, e, (s, q) in zip(model.parameters(), before, expected_extra, ref, strict=True):
        step = torch.sign(s) * (q / 6).sqrt() + e
        assert close(b - p.detach(), lr * step)
    probe.remove()


def test_statistics_of_a_pass_that_did_not_accumulate_are_refused():
    """torch.autograd.grad with a probe attached (and not paused) records statistics that
    p.grad never receives."""
    model = _model()
    probe = PerExampleGradStats(model)
    opt = SynaPrune(model.parameters(), lr=0.01, aggregation="rms")
    _loss(model, *_batch(6, 1)).backward()
    torch.autograd.grad(_loss(model, *_batch(6, 2)), list(model.parameters()))
    with pytest.raises(RuntimeError, match="did not accumulate into"):
        opt.step()
    probe.remove()


# -- what is missing, and the registry of probes -------------------------------------------------


def test_missing_statistics_say_what_happened():
    model = _model()
    x, y = _batch(6, 1)
    opt = SynaPrune(model.parameters(), lr=0.01, aggregation="rms")
    _loss(model, x, y).backward()
    with pytest.raises(RuntimeError, match="no attached PerExampleGradStats tracks"):
        opt.step()
    probe = PerExampleGradStats(model)
    model.zero_grad()
    with probes_paused():
        _loss(model, x, y).backward()
    with pytest.raises(RuntimeError, match="no backward pass recorded statistics"):
        opt.step()
    probe.remove()


def test_a_monitor_stands_aside_only_for_probes_still_attached():
    """The monitor attaches its own probe only where no attached probe tracks the parameters:
    a removed probe no longer counts, and the monitor's own probe then records."""
    model = _model()
    probe = PerExampleGradStats(model)
    assert TrainingMonitor(model, cancellation=True).probe is None
    probe.remove()
    mon = TrainingMonitor(model, cancellation=True)
    assert mon.probe is not None
    x, y = _batch(6, 1)
    loss = _loss(model, x, y)
    loss.backward()
    assert 0.0 < mon.cheap(loss)["cancellation"] <= 1.0
    mon.close()
