"""Probes: statistics gathered from ordinary forward and backward passes, and the same
per-example statistics as functions (:func:`per_example_sums`, no hooks; for S stacked models
too)."""

from synaprune.probes._functional import per_example_sums
from synaprune.probes.grad_stats import PerExampleGradStats, probes_paused, remove_probes

__all__ = ["PerExampleGradStats", "per_example_sums", "probes_paused", "remove_probes"]
