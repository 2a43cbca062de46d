"""SynaPrune inside a PyTorch Lightning ``Trainer``: :class:`SynaPruneCallback`.

The callback attaches :class:`synaprune.PerExampleGradStats` (what SynaPrune's ``rms`` and
``blend`` aggregations and the monitor's ``cancellation`` read) and, when ``beta`` is given, the
activation-gradient penalty (mechanism C) to the LightningModule's model, runs
:class:`synaprune.diagnose.TrainingMonitor` at every optimizer step and logs its quantities to
every logger of the trainer. Mechanisms A and B are the optimizer's: return
:class:`synaprune.SynaPrune` from ``configure_optimizers`` as any optimizer.

Where each piece sits in Lightning's automatic optimization (``training_step``, then
``zero_grad`` on the first micro-batch of an accumulation window, then ``backward``; after the
last micro-batch ``on_before_optimizer_step``, gradient clipping, ``optimizer.step``):

* the penalty wraps the loss that ``training_step`` returns (a tensor, or the ``"loss"`` of a
  dict): ``penalty(loss)`` is built before ``zero_grad``, an order the core supports (the data
  loss's per-example statistics belong to the backward pass that uses them);
* the monitor records in ``on_before_optimizer_step``: after every micro-batch has accumulated
  into ``.grad`` and before clipping, at step ``trainer.global_step`` (0 for the first step);
  its ``loss`` is the mean of the micro-batches' data losses (without the penalty);
* ``gradient_clip_val`` rescales ``.grad`` by k = clip / ||g|| (``clip_grad_norm_``), and
  SynaPrune's aggregated direction (``rms``, ``blend``) is rescaled by the same k: the
  statistics follow ``.grad`` (see :mod:`synaprune.probes._fields`);
* ``accumulate_grad_batches=P`` divides each micro-batch's loss by P; the statistics
  accumulate with ``.grad``, so ``rms`` of P equal micro-batches equals ``rms`` of their union
  scaled as ``.grad`` is (mean-reduced micro-batches of different sizes are refused at the
  step: their root mean square is not known).

Checkpoints: the optimizer's state dict holds SynaPrune's noise generators, stall triggers and
step counter; the callback's own state (``state_dict``, saved in Lightning checkpoints) holds
the penalty's reference norms c_l, taken from the weights when the run first started, so a run
resumed with ``ckpt_path`` follows the uninterrupted trajectory.

Example:
    >>> import lightning.pytorch as pl                             # doctest: +SKIP
    >>> callback = SynaPruneCallback(beta=1e-3, gamma=1.0, monitor_path="out/monitor.jsonl")
    >>> trainer = pl.Trainer(max_epochs=2, callbacks=[callback])   # doctest: +SKIP
    >>> trainer.fit(module)                                        # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from synaprune.diagnose.monitor import Schedule, TrainingMonitor, never
from synaprune.optim import ActivationGradientPenalty, SynaPrune
from synaprune.probes import PerExampleGradStats

__all__ = ["SynaPruneCallback"]


def _default_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError("SynaPruneCallback: the monitor's expensive set needs an (x, y) batch; "
                     "this batch is not a pair: pass batch_fn=lambda batch: (x, y)")


class SynaPruneCallback(Callback):
    """Per-example statistics, the activation-gradient penalty and the training monitor in a
    Lightning ``Trainer``.

    Args:
        module: name of the submodule of the LightningModule to attach to (e.g. ``"model"``);
            None: the LightningModule itself.
        stats: attach :class:`synaprune.PerExampleGradStats` (needed by SynaPrune's ``rms`` and
            ``blend``, and for the monitor's ``cancellation``).
        reduction: ``"mean"`` or ``"sum"``, the reduction over the batch of the loss that
            ``training_step`` returns (for the statistics and the penalty).
        beta: weight of the activation-gradient penalty; None: no penalty.
        gamma: weight of the penalty's weight stabiliser (with ``beta`` only).
        layers: names of the submodules (of the attached model) whose outputs the penalty
            takes as hidden activations; None: every activation module.
        monitor: run a :class:`synaprune.diagnose.TrainingMonitor`.
        monitor_path: the monitor's JSONL file (None: records in memory only).
        loss_fn: ``loss_fn(model(x), y)`` -> mean loss, for the monitor's expensive set.
        schedule: when the monitor computes its expensive set (step -> bool), e.g.
            ``every(100)``; default never.
        k: eigenvalues from each end in the expensive set.
        per_parameter: record ``grad_norm/<name>`` per parameter.
        batch_fn: turns a training batch into the ``(x, y)`` of the expensive set; default:
            the batch itself when it is a pair.
        log_every_n_steps: log the monitor's record to the trainer's loggers every n steps
            (and always at the steps of the expensive set); None: the trainer's
            ``log_every_n_steps``.
        prefix: prepended to every logged name.

    Attributes:
        stats: the attached probe (None before ``fit`` and after it).
        penalty: the :class:`synaprune.ActivationGradientPenalty`, or None.
        monitor: the :class:`synaprune.diagnose.TrainingMonitor`, or None; its ``records``
            stay readable after ``fit``.

    Raises:
        ValueError: invalid options; at ``fit``: a SynaPrune optimizer aggregating with
            ``rms``/``blend`` while ``stats=False``, or a penalty under manual optimization.
    """

    def __init__(
        self,
        *,
        module: str | None = None,
        stats: bool = True,
        reduction: str = "mean",
        beta: float | None = None,
        gamma: float = 0.0,
        layers: Sequence[str] | None = None,
        monitor: bool = True,
        monitor_path: str | os.PathLike[str] | None = None,
        loss_fn: Callable[[Any, Any], Tensor] | None = None,
        schedule: Schedule = never,
        k: int = 1,
        per_parameter: bool = True,
        batch_fn: Callable[[Any], tuple[Any, Any]] | None = None,
        log_every_n_steps: int | None = None,
        prefix: str = "synaprune/",
    ) -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"Invalid reduction: {reduction!r}; expected 'mean' or 'sum'")
        if beta is not None and not beta >= 0.0:
            raise ValueError(f"Invalid beta: {beta}; must be >= 0 (or None for no penalty)")
        if not gamma >= 0.0:
            raise ValueError(f"Invalid gamma: {gamma}; must be >= 0")
        if beta is None and gamma != 0.0:
            raise ValueError("Contradictory options: gamma is set but beta is None (no "
                             "penalty); set beta too")
        if layers is not None and beta is None:
            raise ValueError("Contradictory options: layers is set but beta is None (no "
                             "penalty); set beta too")
        if log_every_n_steps is not None and (isinstance(log_every_n_steps, bool)
                                              or log_every_n_steps < 1):
            raise ValueError(f"Invalid log_every_n_steps: {log_every_n_steps!r}; expected an "
                             "int >= 1 or None")
        if not monitor and (monitor_path is not None or loss_fn is not None
                            or schedule is not never):
            raise ValueError("Contradictory options: monitor_path, loss_fn or schedule given "
                             "with monitor=False")
        self.module_name = module
        self.use_stats = stats
        self.reduction = reduction
        self.beta, self.gamma = beta, float(gamma)
        self.layer_names = None if layers is None else list(layers)
        self.use_monitor = monitor
        self.monitor_path = monitor_path
        self.loss_fn = loss_fn
        self.schedule = schedule
        self.k = k
        self.per_parameter = per_parameter
        self.batch_fn = batch_fn or _default_batch
        self.log_every_n_steps = log_every_n_steps
        self.prefix = prefix
        self.stats: PerExampleGradStats | None = None
        self.penalty: ActivationGradientPenalty | None = None
        self.monitor: TrainingMonitor | None = None
        self._init_norms: list[float] | None = None  # the penalty's c_l, kept for checkpoints
        self._norms_of: int | None = None  # id of the model they were taken from (None: a ckpt)
        self._module: pl.LightningModule | None = None
        self._losses: list[Tensor] = []
        self._terms: list[tuple[float, float]] = []
        self._batch: Any = None

    # -- attaching -----------------------------------------------------------------------------

    def _model(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.module_name is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.module_name)
        except AttributeError:
            raise ValueError(f"SynaPruneCallback(module={self.module_name!r}): the "
                             f"LightningModule has no such submodule") from None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Attach to the model (stage ``fit``), before any checkpoint is restored."""
        if stage != "fit":
            return
        self._detach()
        model = self._model(pl_module)
        if self.use_stats:
            self.stats = PerExampleGradStats(model, reduction=self.reduction)  # type: ignore[arg-type]
        if self.beta is not None:
            layers = (None if self.layer_names is None
                      else [model.get_submodule(n) for n in self.layer_names])
            self.penalty = ActivationGradientPenalty(model, beta=self.beta, gamma=self.gamma,
                                                     layers=layers, reduction=self.reduction)
            if self._init_norms is None or self._norms_of not in (None, id(model)):
                # A first fit, or this callback reused on another model: its own norms.
                self._init_norms = list(self.penalty.init_norms)
            else:  # an earlier fit of this model, or a checkpoint (applied again at restore)
                self._set_init_norms(self._init_norms)
            self._norms_of = id(model)
        if self.use_monitor:
            self.monitor = TrainingMonitor(
                model, self.monitor_path, loss_fn=self.loss_fn, schedule=self.schedule,
                k=self.k, per_parameter=self.per_parameter, reduction=self.reduction)
        self._wrap_training_step(pl_module)

    def _set_init_norms(self, norms: list[float]) -> None:
        assert self.penalty is not None
        if len(norms) != len(self.penalty.weights):
            raise ValueError(f"SynaPruneCallback: the checkpoint holds {len(norms)} penalty "
                             f"reference norms, the model has {len(self.penalty.weights)} "
                             "weights to stabilise: not the same model")
        self.penalty.init_norms = [float(c) for c in norms]

    def _wrap_training_step(self, pl_module: pl.LightningModule) -> None:
        original = pl_module.training_step  # the bound method of the class

        def training_step(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            loss = out.get("loss") if isinstance(out, Mapping) else out
            if not isinstance(loss, Tensor):
                return out
            self._losses.append(loss.detach())
            if self.penalty is None or not torch.is_grad_enabled():
                return out
            total = self.penalty(loss)
            self._terms.append((self.penalty.last_penalty, self.penalty.last_stabiliser))
            if isinstance(out, Mapping):
                return {**out, "loss": total}
            return total

        pl_module.training_step = training_step  # type: ignore[method-assign]
        self._module = pl_module

    def _detach(self) -> None:
        if self._module is not None:
            self._module.__dict__.pop("training_step", None)  # back to the class's method
            self._module = None
        if self.stats is not None:
            self.stats.remove()
            self.stats = None
        if self.penalty is not None:
            self.penalty.remove()
            self.penalty = None
        if self.monitor is not None:
            self.monitor.close()  # its records stay readable
        self._losses, self._terms, self._batch = [], [], None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove every hook and the training-step wrapper; close the monitor's file."""
        if stage == "fit":
            self._detach()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse what would train silently wrong, once the optimizers exist."""
        if self.penalty is not None and not pl_module.automatic_optimization:
            raise ValueError("SynaPruneCallback(beta=...): the penalty wraps the loss that "
                             "training_step returns, which manual optimization does not use; "
                             "call callback.penalty(loss) before manual_backward instead, and "
                             "leave beta unset here")
        for opt in trainer.optimizers:
            if isinstance(opt, SynaPrune) and not self.use_stats and any(
                    g["aggregation"] != "mean" for g in opt.param_groups):
                raise ValueError("SynaPrune aggregates with 'rms'/'blend', which needs "
                                 "per-example statistics: SynaPruneCallback(stats=True)")

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The penalty's reference norms c_l (floats), so that a resumed run keeps them."""
        return {} if self._init_norms is None else {"init_norms": list(self._init_norms)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        norms = state_dict.get("init_norms")
        if norms is None:
            if self.beta is not None:
                warnings.warn("SynaPruneCallback: the checkpoint holds no penalty reference "
                              "norms (saved without this callback's penalty); the stabiliser "
                              "takes the restored weights' norms instead", stacklevel=2)
            return
        if self.beta is None:
            return
        self._init_norms = [float(c) for c in norms]
        self._norms_of = None
        if self.penalty is not None:
            self._set_init_norms(self._init_norms)

    # -- each step ---------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._batch = batch  # the latest micro-batch, for the expensive set

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        """Record the monitor (after all micro-batches, before clipping) and log it."""
        losses, terms = self._losses, self._terms
        self._losses, self._terms = [], []
        if self.monitor is None:
            return
        step = int(trainer.global_step)
        loss = (float(torch.stack(losses).mean()) if losses else math.nan)
        scheduled = bool(self.schedule(step))
        batch = self.batch_fn(self._batch) if scheduled and self._batch is not None else None
        rec = dict(self.monitor.record(step, loss, batch))
        if terms:
            rec["penalty"] = sum(t[0] for t in terms) / len(terms)
            rec["stabiliser"] = sum(t[1] for t in terms) / len(terms)
        every_n = self.log_every_n_steps or trainer.log_every_n_steps
        if scheduled or step % every_n == 0:
            metrics = {f"{self.prefix}{name}": value for name, value in rec.items()}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
