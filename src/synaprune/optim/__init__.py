"""Optimizers: SynaPrune's mechanisms as small functional pieces, and the Optimizer adapter."""

from synaprune.optim.aggregation import aggregate, cancellation
from synaprune.optim.penalty import ActivationGradientPenalty
from synaprune.optim.synaprune import SynaPrune

__all__ = ["ActivationGradientPenalty", "SynaPrune", "aggregate", "cancellation"]
