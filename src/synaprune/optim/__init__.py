"""Optimizers: SynaPrune's mechanisms as small functional pieces, and the Optimizer adapter;
:class:`SaddleFreeNewton` (Dauphin et al. 2014) for small models; the baselines
:class:`PerturbedGD`, :class:`GradientNoise` and :class:`SAM`.

Every optimizer here trains one model, or S stacked models at once with ``num_models=S`` (one
convention for all, described in ``synaprune/optim/_stacked.py``).
"""

from synaprune.optim.aggregation import aggregate, cancellation
from synaprune.optim.penalty import ActivationGradientPenalty
from synaprune.optim.perturbed import SAM, GradientNoise, PerturbedGD
from synaprune.optim.saddle_free_newton import SaddleFreeNewton
from synaprune.optim.synaprune import SynaPrune

__all__ = [
    "SAM",
    "ActivationGradientPenalty",
    "GradientNoise",
    "PerturbedGD",
    "SaddleFreeNewton",
    "SynaPrune",
    "aggregate",
    "cancellation",
]
