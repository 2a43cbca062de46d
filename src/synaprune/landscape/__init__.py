"""Loss landscapes: lines, planes and the plane of a training trajectory.

* :func:`interpolate`: the loss along the segment between two parameter vectors
  (Goodfellow et al. 2015).
* :func:`random_directions`: Gaussian directions, filter-normalised (Li et al. 2018).
* :func:`slice_2d`: the loss over ``center + alpha * d1 + beta * d2`` on a grid, the points
  evaluated in vmap-ed chunks of bounded memory.
* :func:`trajectory_pca`: the two principal directions of the parameter iterates and the
  trajectory's coordinates in their plane (:class:`TrajectoryPCA`).
* :func:`draw_slice`: contours of a slice with a trajectory on top.

Parameters are dicts ``name -> tensor`` keyed as in ``model.named_parameters()``.

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from torch import nn
    >>> from synaprune.landscape import interpolate
    >>> model = nn.Linear(4, 1)
    >>> data = (torch.randn(16, 4), torch.randn(16, 1))
    >>> a = {n: p.detach().clone() for n, p in model.named_parameters()}
    >>> b = {n: torch.zeros_like(p) for n, p in a.items()}
    >>> alphas, losses = interpolate(model, F.mse_loss, data, a, b, num=11)
    >>> losses.shape
    torch.Size([11])
"""

from synaprune.landscape.directions import random_directions
from synaprune.landscape.pca import TrajectoryPCA, trajectory_pca
from synaprune.landscape.plot import draw_slice
from synaprune.landscape.slices import interpolate, slice_2d

__all__ = [
    "TrajectoryPCA",
    "draw_slice",
    "interpolate",
    "random_directions",
    "slice_2d",
    "trajectory_pca",
]
