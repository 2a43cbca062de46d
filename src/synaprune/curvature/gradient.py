"""Curvature along the gradient: g^T H g / g^T g.

A step theta - eps * g changes the loss by about -eps * g^T g + (eps^2 / 2) * g^T H g, so it
*raises* the loss once eps / 2 * g^T H g > g^T g: gradient descent on an ill-conditioned valley
with a step larger than 2 / curvature (DESIGN.md, "Diagnostics"; Goodfellow et al. 2016, 4.3.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from synaprune.curvature.hvp import HessianOperator
from synaprune.curvature.operator import as_flat_operator


@dataclass(frozen=True)
class GradientCurvature:
    """The curvature along the gradient and its two parts.

    Attributes:
        curvature: g^T H g / g^T g, the Rayleigh quotient of H at g (nan when g = 0).
        ghg: g^T H g.
        gg: g^T g, the squared gradient norm.
        num_products: operator-vector products used (1).
    """

    curvature: float
    ghg: float
    gg: float
    num_products: int

    def max_stable_step(self) -> float:
        """2 / curvature: steps -eps * g with eps beyond this raise the loss to second order
        (inf when the curvature is <= 0 or undefined)."""
        if not self.curvature > 0:
            return math.inf
        return 2.0 / self.curvature


def gradient_curvature(op: Any, gradient: Tensor | None = None) -> GradientCurvature:
    """Compute g^T H g / g^T g, with g^T H g and g^T g.

    Args:
        op: a :class:`HessianOperator` (g defaults to the gradient of its mean loss), or any
            operator accepted by :func:`lanczos` together with ``gradient``.
        gradient: g, a flat tensor of size [n]; required unless ``op`` is a HessianOperator.

    Returns:
        A :class:`GradientCurvature`.

    Raises:
        ValueError: no gradient for a generic operator, or a gradient of the wrong size.

    Example:
        >>> import torch
        >>> from synaprune.curvature import gradient_curvature
        >>> a = torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64))
        >>> gradient_curvature(a, torch.tensor([1.0, 1.0], dtype=torch.float64)).curvature
        2.0
    """
    flat = as_flat_operator(op)
    if gradient is None:
        if not isinstance(op, HessianOperator):
            raise ValueError("gradient is required unless op is a HessianOperator")
        gradient = op.gradient()
    if not isinstance(gradient, Tensor) or gradient.shape != (flat.dim,):
        shape = list(gradient.shape) if isinstance(gradient, Tensor) else type(gradient).__name__
        raise ValueError(f"gradient must be a tensor of size [{flat.dim}], got {shape}")
    g = gradient.to(dtype=flat.dtype, device=flat.device)
    ghg = float(g @ flat.matvec(g))
    gg = float(g @ g)
    curvature = ghg / gg if gg > 0 else math.nan
    return GradientCurvature(curvature=curvature, ghg=ghg, gg=gg, num_products=1)
