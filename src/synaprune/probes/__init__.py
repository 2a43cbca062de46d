"""Probes: statistics gathered from ordinary forward and backward passes."""

from synaprune.probes.grad_stats import PerExampleGradStats, probes_paused

__all__ = ["PerExampleGradStats", "probes_paused"]
