"""Integrations with the tools practitioners train with.

* :mod:`synaprune.integrations.lightning`: :class:`~synaprune.integrations.lightning.
  SynaPruneCallback`, per-example statistics, the activation-gradient penalty and the training
  monitor inside a PyTorch Lightning ``Trainer`` (needs the ``lightning`` package).

TensorBoard needs no integration module: ``TrainingMonitor(..., writer=SummaryWriter(...))``.
Each submodule imports its framework, so this package imports none.
"""

__all__: list[str] = []
