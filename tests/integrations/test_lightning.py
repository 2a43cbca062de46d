"""SynaPruneCallback in a real Lightning Trainer (CPU) against the same plain training loop.

Every comparison runs the plain loop in float64 with the same model, data order, optimizer and
penalty, in Lightning's order (training_step builds the penalised loss, then zero_grad, then
backward), and compares the parameters after every optimizer step. The two compute the same
operations in the same order; 1e-12 leaves room for nothing but a different order of the same
float64 sums.
"""

from __future__ import annotations

import csv
import logging
import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Sampler, TensorDataset

from synaprune import ActivationGradientPenalty, PerExampleGradStats, SynaPrune
from synaprune.diagnose import TrainingMonitor, every
from synaprune.integrations.lightning import SynaPruneCallback
from synaprune.problems import get_problem

pytestmark = pytest.mark.filterwarnings(
    "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")

PROBLEM = get_problem("digits:hidden=16")
X, Y = PROBLEM.data("train")  # 1347 examples: 21 batches of 64 (last partial batch dropped)
BATCH = 64
ATOL = 1e-12  # float64, the same operations in the same order (see the module docstring)
A_B = dict(lr=0.1, momentum=0.9, aggregation="blend", blend=0.5, noise=1e-3, seed=7)
C = dict(beta=1e-3, gamma=1.0)


@pytest.fixture(autouse=True)
def _quiet():
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


class EpochShuffle(Sampler[int]):
    """A permutation per epoch, seeded by (seed, epoch); Lightning calls ``set_epoch``, so a run
    resumed at an epoch boundary sees the same order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(X, Y), batch_size=BATCH, sampler=EpochShuffle(len(X), 3),
                      drop_last=True)


class Net(pl.LightningModule):
    def __init__(self, seed: int, options: dict) -> None:
        super().__init__()
        self.model = PROBLEM.build_model(seed)
        self.options = options

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return SynaPrune(self.parameters(), **self.options)


class Trajectory(Callback):
    """Parameters after each optimizer step: steps[t] after t steps."""

    def __init__(self) -> None:
        self.steps: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]


def _trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    kwargs.setdefault("max_epochs", 2)
    kwargs.setdefault("enable_checkpointing", False)
    return pl.Trainer(accelerator="cpu", devices=1, logger=CSVLogger(tmp_path / "logs"),
                      enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, callbacks=callbacks, **kwargs)


def _lightning(tmp_path, options, *, callback=None, seed=0, **kwargs):
    callback = callback or SynaPruneCallback(**C)
    traj = Trajectory()
    net = Net(seed, options)
    trainer = _trainer(tmp_path, [callback, traj], **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on dataloader workers
        trainer.fit(net, train_dataloaders=_loader())
    return traj.steps, callback, trainer


def _plain(options, *, penalty=True, epochs=2, accumulate=1, clip=None, seed=0):
    """The plain loop Lightning runs: returns (parameters after each step, monitor records,
    gradient norms before clipping)."""
    model = PROBLEM.build_model(seed)
    stats = PerExampleGradStats(model)
    pen = ActivationGradientPenalty(model, **C) if penalty else None
    monitor = TrainingMonitor(model, None)
    opt = SynaPrune(model.parameters(), **options)
    loader = _loader()
    traj, norms, losses, step = {}, [], [], 0
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        for i, (x, y) in enumerate(batches):
            loss = F.cross_entropy(model(x), y)
            total = pen(loss) if pen is not None else loss
            if i % accumulate == 0:
                opt.zero_grad()
            (total / accumulate).backward()
            losses.append(loss.detach())
            if (i + 1) % accumulate == 0 or i + 1 == len(batches):
                monitor.record(step, torch.stack(losses).mean())
                losses = []
                if clip is not None:
                    norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
                opt.step()
                step += 1
                traj[step] = [p.detach().clone() for p in model.parameters()]
    stats.remove()
    if pen is not None:
        pen.remove()
    return traj, monitor.records, norms


def _assert_same(lightning_traj, plain_traj, steps=None):
    steps = sorted(plain_traj) if steps is None else steps
    assert set(steps) <= set(lightning_traj), "Lightning took other steps than the plain loop"
    for t in steps:
        for a, b in zip(lightning_traj[t], plain_traj[t], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=ATOL, msg=lambda m, t=t: f"step {t}: {m}")


def test_two_epochs_equal_the_plain_loop_step_for_step(tmp_path):
    """A (blend), B (noise, seeded) and C (penalty) over two epochs: 42 steps, each equal; the
    monitor's records equal the plain loop's and reach the logger at every step."""
    cb = SynaPruneCallback(**C)
    traj, cb, trainer = _lightning(tmp_path, A_B, callback=cb, log_every_n_steps=1)
    plain, records, _ = _plain(A_B)
    assert len(plain) == 42 and max(traj) == 42
    _assert_same(traj, plain)
    assert (traj[42][0] - next(PROBLEM.build_model(0).parameters())).abs().max() > 1e-3
    # The monitor recorded before each step, what the plain loop recorded.
    assert sorted(cb.monitor.records) == list(range(42))
    for t, rec in records.items():
        # The callback attached to the LightningModule, whose parameters are model.<name>.
        got = {n.replace("/model.", "/"): v for n, v in cb.monitor.records[t].items()}
        assert set(got) == set(rec)
        for name, value in rec.items():
            assert math.isclose(got[name], value, rel_tol=1e-12, abs_tol=1e-15), (t, name)
        assert 0.0 < got["cancellation"] < 1.0
    # ... and every record reached the logger: read the CSV back.
    trainer.logger.finalize("success")
    with open(f"{trainer.logger.log_dir}/metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("synaprune/loss")]
    logged = {int(r["step"]): r for r in rows}
    assert sorted(logged) == list(range(42))
    for t, r in logged.items():
        assert float(r["synaprune/loss"]) == records[t]["loss"]  # repr round-trips
        assert float(r["synaprune/grad_norm"]) == cb.monitor.records[t]["grad_norm"]
        assert float(r["synaprune/penalty"]) > 0.0


def test_resume_from_checkpoint_reproduces_the_trajectory(tmp_path):
    """Checkpoint after epoch 1, resume with ckpt_path into a model built from another seed (so
    nothing is inherited by chance): epoch 2 equals the uninterrupted run, noise generator and
    the penalty's reference norms included."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    cb_full = SynaPruneCallback(**C)
    traj_full = Trajectory()
    trainer = _trainer(tmp_path / "a", [cb_full, traj_full, ckpt], enable_checkpointing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Net(0, A_B), train_dataloaders=_loader())
    path = tmp_path / "ckpt" / "epoch=0-step=21.ckpt"
    assert path.is_file()

    cb = SynaPruneCallback(**C)
    traj = Trajectory()
    resumed = _trainer(tmp_path / "b", [cb, traj])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed.fit(Net(1, A_B), train_dataloaders=_loader(), ckpt_path=str(path))
    assert sorted(traj.steps) == list(range(22, 43))
    _assert_same(traj.steps, traj_full.steps, steps=list(range(22, 43)))
    # The resumed penalty uses the first run's c_l, not the norms of the seed-1 init.
    assert cb.state_dict()["init_norms"] == cb_full.state_dict()["init_norms"]
    assert cb.state_dict()["init_norms"] != [
        float(m.weight.detach().norm()) for m in Net(1, A_B).model if hasattr(m, "weight")]
    # The monitor's records of the resumed run carry the global steps.
    assert sorted(cb.monitor.records) == list(range(21, 42))


def test_resume_without_the_generator_state_would_differ(tmp_path):
    """The check above can fail: a run whose noise restarts from its seed at epoch 2 (what a
    resume that lost the generator state does) leaves the uninterrupted trajectory."""
    plain, _, _ = _plain(A_B)
    model = PROBLEM.build_model(0)
    # Restart the noise at step 21 from the seed: train epoch 1, rebuild the optimizer.
    stats = PerExampleGradStats(model)
    pen = ActivationGradientPenalty(model, **C)
    opt = SynaPrune(model.parameters(), **A_B)
    loader = _loader()
    for epoch in range(2):
        if epoch == 1:
            state = opt.state_dict()
            state["synaprune"]["generator"] = [torch.Generator().manual_seed(7).get_state()]
            opt.load_state_dict(state)
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            total = pen(F.cross_entropy(model(x), y))
            opt.zero_grad()
            total.backward()
            opt.step()
    stats.remove()
    pen.remove()
    assert (next(model.parameters()) - plain[42][0]).abs().max() > 1e-8


def test_accumulate_grad_batches_equals_a_plain_loop_with_accumulation(tmp_path):
    """accumulate_grad_batches=2: Lightning divides each loss by 2, zeroes on the first
    micro-batch of a window and steps after the second (and after the last batch of an epoch):
    rms over the accumulated statistics equals the plain loop doing the same."""
    options = dict(lr=0.1, momentum=0.9, aggregation="rms", noise=1e-3, seed=7)
    traj, cb, _ = _lightning(tmp_path, options, accumulate_grad_batches=2)
    plain, records, _ = _plain(options, accumulate=2)
    assert len(plain) == 22  # 10 windows of 2 and one of 1, per epoch
    _assert_same(traj, plain)
    for t, rec in records.items():
        for name in ("loss", "grad_norm", "cancellation"):
            assert math.isclose(cb.monitor.records[t][name], rec[name], rel_tol=1e-12), (t, name)
    # Not the same as stepping every batch.
    unaccumulated, _, _ = _plain(options)
    assert (plain[22][0] - unaccumulated[22][0]).abs().max() > 1e-6


def test_gradient_clip_val_scales_the_rms_direction(tmp_path):
    """gradient_clip_val rescales .grad by clip/||g||; SynaPrune's rms direction follows it by the
    same factor, as in a plain loop doing clip_grad_norm_ then step."""
    options = dict(lr=0.1, momentum=0.9, aggregation="rms", seed=7)
    clip = 0.05
    traj, cb, _ = _lightning(tmp_path, options, gradient_clip_val=clip)
    plain, _, norms = _plain(options, clip=clip)
    assert sum(n > clip for n in norms) >= 30, "clipping must act on most steps"
    _assert_same(traj, plain)
    # The monitor records before clipping: the norm clip_grad_norm_ saw.
    for t, n in enumerate(norms):
        assert math.isclose(cb.monitor.records[t]["grad_norm"], n, rel_tol=1e-12)
    unclipped, _, _ = _plain(options)
    assert (plain[42][0] - unclipped[42][0]).abs().max() > 1e-6


def test_options_are_validated_and_contradictions_refused(tmp_path):
    with pytest.raises(ValueError, match="Invalid reduction"):
        SynaPruneCallback(reduction="avg")
    with pytest.raises(ValueError, match="gamma is set but beta"):
        SynaPruneCallback(gamma=1.0)
    with pytest.raises(ValueError, match="Invalid beta"):
        SynaPruneCallback(beta=-1.0)
    with pytest.raises(ValueError, match="monitor=False"):
        SynaPruneCallback(monitor=False, schedule=every(2))
    # rms without statistics would raise at the first step; the callback says why at fit.
    with pytest.raises(ValueError, match="stats=True"):
        _lightning(tmp_path, dict(lr=0.1, aggregation="rms"),
                   callback=SynaPruneCallback(stats=False), max_steps=1)


def test_monitor_expensive_set_on_schedule_and_submodule(tmp_path):
    """module='model' attaches to the submodule; the expensive set is computed on the scheduled
    steps from the step's batch, and logged there even between log_every_n_steps."""
    cb = SynaPruneCallback(module="model", loss_fn=F.cross_entropy, schedule=every(5, start=3),
                           log_every_n_steps=50)
    _, cb, trainer = _lightning(tmp_path, dict(lr=0.1, aggregation="rms"), callback=cb,
                                max_epochs=1)
    steps = [t for t, r in cb.monitor.records.items() if "curvature" in r]
    assert steps == [3, 8, 13, 18]
    assert all(n.startswith(("loss", "grad_norm", "cancell", "ghg", "gg", "curv", "eig",
                             "lanczos")) for n in cb.monitor.records[3])
    assert any(n.startswith("grad_norm/0.") for n in cb.monitor.records[3])  # the submodule's
    trainer.logger.finalize("success")
    with open(f"{trainer.logger.log_dir}/metrics.csv", newline="") as fh:
        logged = sorted({int(r["step"]) for r in csv.DictReader(fh) if r.get("synaprune/loss")})
    assert logged == [0, 3, 8, 13, 18]


def test_a_callback_reused_on_another_model_takes_that_model_s_norms(tmp_path):
    """Fitting the same module again keeps the penalty's c_l; a new module gets its own (the
    norms of the first would silently shape the second's stabiliser)."""
    cb = SynaPruneCallback(**C)
    first = Net(0, A_B)
    norms0 = [float(m.weight.detach().norm()) for m in first.model if hasattr(m, "weight")]
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _trainer(tmp_path, [cb], max_steps=1).fit(first, train_dataloaders=_loader())
        assert cb.state_dict()["init_norms"] == norms0
    second = Net(1, A_B)
    norms1 = [float(m.weight.detach().norm()) for m in second.model if hasattr(m, "weight")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(tmp_path, [cb], max_steps=1).fit(second, train_dataloaders=_loader())
    assert cb.state_dict()["init_norms"] == norms1 != norms0
