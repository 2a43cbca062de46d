"""Optimizers: SynaPrune's mechanisms as small functional pieces, and the Optimizer adapter;
:class:`SaddleFreeNewton` (Dauphin et al. 2014) for small models."""

from synaprune.optim.aggregation import aggregate, cancellation
from synaprune.optim.penalty import ActivationGradientPenalty
from synaprune.optim.saddle_free_newton import SaddleFreeNewton
from synaprune.optim.synaprune import SynaPrune

__all__ = [
    "ActivationGradientPenalty",
    "SaddleFreeNewton",
    "SynaPrune",
    "aggregate",
    "cancellation",
]
