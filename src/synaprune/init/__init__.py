"""Supervised pretraining by greedy random features (seed 003).

Fix random hidden neurons and the output layer is least squares, solved exactly; add neurons
one at a time, keeping each only if it lowers the objective, optionally keep random
perturbations that lower it, and deepen with layers whose linear carry units pass the previous
fit through, so that nothing added can raise the objective. The objective (training MSE, mean
over examples and outputs) bounds the loss of the local minimum gradient descent reaches from
the returned network.

* :func:`pretrain`: one hidden layer of tanh or ReLU neurons, returns a :class:`PretrainResult`.
* :func:`add_layers`: deepen a result by layers of ``width`` neurons plus a carry.
* :func:`deep_from_shallow`: the same function as a shallow network, as a deep one.
* :func:`least_squares`: the solver (an SVD solve with a stated rank guard).

Example:
    >>> import torch
    >>> from synaprune.init import add_layers, pretrain
    >>> x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> y = torch.sin(3 * x[:, 0]) * torch.sin(3 * x[:, 1])
    >>> shallow = pretrain(x, y, neurons=10, activation="relu", seed=1)
    >>> deep = add_layers(shallow, x, y, layers=3, width=5, seed=2)
    >>> deep.objective <= shallow.objective
    True
"""

from ._depth import add_layers, deep_from_shallow
from ._greedy import PretrainResult, pretrain
from ._lstsq import least_squares
from ._network import PretrainedLayer, PretrainedNet

__all__ = [
    "PretrainResult",
    "PretrainedLayer",
    "PretrainedNet",
    "add_layers",
    "deep_from_shallow",
    "least_squares",
    "pretrain",
]
