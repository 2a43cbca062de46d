"""Diagnose a stuck run: the kind of point, what is wrong, and what to try (seeds 002, 004).

* :func:`diagnose` -> :class:`Diagnosis`: critical point or not, local minimum, saddle (with its
  index), plateau or ill-conditioned valley, with the evidence and flags (gradient flow, dead
  units, tiny weights, unscaled inputs, spectral radius), each with a remedy and a setting.
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
