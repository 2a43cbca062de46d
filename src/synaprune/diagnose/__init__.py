"""Diagnose a stuck run: the kind of point, what is wrong, and what to try (seeds 002, 004).

* :func:`diagnose` -> :class:`Diagnosis`: global minimum, minimum at infinity, critical point
  or not, local minimum, saddle (with its index), plateau or ill-conditioned valley, with the
  evidence and flags (gradient flow, dead and saturated units, cliffs, tiny weights, unscaled
  inputs, spectral radius), each with a remedy and a setting; no remedy repeats what the run
  uses, and none the lab measured to hurt on a problem of the same kind.
* :class:`TrainingMonitor` with :func:`every`: cheap statistics every step, expensive ones on a
  schedule, as JSONL and in memory.
"""

from synaprune.diagnose._diagnose import diagnose
from synaprune.diagnose._report import KINDS, Diagnosis, Finding, LayerReport
from synaprune.diagnose.monitor import TrainingMonitor, every, never, read_jsonl

__all__ = [
    "KINDS",
    "Diagnosis",
    "Finding",
    "LayerReport",
    "TrainingMonitor",
    "diagnose",
    "every",
    "never",
    "read_jsonl",
]
