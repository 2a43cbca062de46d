"""SynaPrune: train past bad local minima, diagnose stuck runs, and measure it honestly."""

from synaprune.optim import ActivationGradientPenalty, SaddleFreeNewton, SynaPrune
from synaprune.probes import PerExampleGradStats

__version__ = "0.1.0"

__all__ = [
    "ActivationGradientPenalty",
    "PerExampleGradStats",
    "SaddleFreeNewton",
    "SynaPrune",
    "__version__",
]
