"""TrainingMonitor(writer=SummaryWriter(...)): the event file, read back with TensorBoard's own
EventAccumulator, holds every quantity of the JSONL record at its step, rounded to float32 (the
precision TensorBoard stores scalars in), and nothing else."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cases import F, mlp, regression
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from synaprune import PerExampleGradStats, SynaPrune
from synaprune.diagnose import TrainingMonitor, every, read_jsonl


def _scalars(logdir) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(logdir), size_guidance={SCALARS: 0})  # 0: keep every event
    acc.Reload()
    return {tag: {ev.step: ev.value for ev in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_event_file_equals_the_jsonl_record(tmp_path):
    model = mlp([4, 6, 1], nn.Tanh)
    stats = PerExampleGradStats(model)
    opt = SynaPrune(model.parameters(), lr=0.05, aggregation="rms")
    writer = SummaryWriter(str(tmp_path / "tb"))
    x, y = regression(n=16)
    mon = TrainingMonitor(model, tmp_path / "m.jsonl", loss_fn=F.mse_loss,
                          schedule=every(3, start=1), writer=writer)
    for step in range(8):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        mon.record(step, loss, (x, y))
        opt.step()
    mon.close()  # flushes the writer; the writer stays the caller's
    writer.add_scalar("after_close", 1.0, 0)  # still open
    writer.close()
    stats.remove()

    jsonl = read_jsonl(tmp_path / "m.jsonl")
    scalars = _scalars(tmp_path / "tb")
    scalars.pop("after_close")
    expected: dict[str, dict[int, float]] = {}
    for step, rec in jsonl.items():
        for name, value in rec.items():
            expected.setdefault(name, {})[step] = value
    assert set(scalars) == set(expected)
    for name, by_step in expected.items():
        assert scalars[name].keys() == by_step.keys(), name
        for step, value in by_step.items():
            # float32 rounding of the float64 record is the only difference.
            assert scalars[name][step] == float(np.float32(value)), (name, step)
    # The expensive set at its scheduled steps only; the cheap set every step.
    assert sorted(scalars["curvature"]) == [1, 4, 7]
    assert sorted(scalars["eig_min_0"]) == [1, 4, 7]
    assert sorted(scalars["cancellation"]) == list(range(8))
    assert sorted(scalars["cancelled_share"]) == [1, 4, 7]
    assert sorted(scalars["grad_norm/0.weight"]) == list(range(8))


def test_non_finite_scalars_are_written_as_nan(tmp_path):
    model = mlp([4, 5, 1], nn.Tanh)
    writer = SummaryWriter(str(tmp_path / "tb"))
    mon = TrainingMonitor(model, tmp_path / "n.jsonl", writer=writer)
    x, y = regression(n=8)
    F.mse_loss(model(x), y).backward()
    mon.record(0, float("nan"))
    mon.close()
    writer.close()
    assert read_jsonl(tmp_path / "n.jsonl")[0]["loss"] is None
    assert math.isnan(_scalars(tmp_path / "tb")["loss"][0])


def test_a_writer_without_add_scalar_is_refused():
    with pytest.raises(ValueError, match="no add_scalar"):
        TrainingMonitor(nn.Linear(2, 1), None, writer=object())
