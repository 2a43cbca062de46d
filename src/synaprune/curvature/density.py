"""The Hessian's spectral density by stochastic Lanczos quadrature (SLQ).

The spectral density is phi(t) = (1/n) sum_i delta(t - lambda_i). For a probe z with
independent signs, normalised to unit length, m Lanczos steps from z give a tridiagonal T with
eigenvalues theta_j (the quadrature nodes) and eigenvectors u_j; the Gauss quadrature weights
are tau_j = (u_j[0])^2, which sum to 1, and sum_j tau_j f(theta_j) approximates
z^T f(H) z / ||z||^2, whose expectation is (1/n) trace f(H). Averaging over ``num_probes`` probes
gives nodes and weights (weights divided by num_probes, so all of them sum to 1) of a discrete
measure approximating phi (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019).

In particular sum_j w_j theta_j is Hutchinson's estimate of trace(H) / n with the same probes,
and the smallest and largest nodes approach the extreme eigenvalues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from synaprune.curvature.lanczos import krylov_basis
from synaprune.curvature.operator import FlatOperator, as_flat_operator, rademacher


@dataclass(frozen=True)
class SpectralDensity:
    """A discrete measure approximating the eigenvalue density (1/n) sum_i delta(t - lambda_i).

    Attributes:
        nodes: float64 tensor of size [num_probes * num_steps] (fewer if a probe's Krylov space
            became invariant early): the quadrature nodes, Ritz values of each probe.
        weights: float64 tensor of the same size, non-negative, summing to 1.
        num_products: operator-vector products used.
    """

    nodes: Tensor
    weights: Tensor
    num_products: int

    @property
    def mean(self) -> float:
        """sum_j w_j theta_j, the estimate of trace(H) / n."""
        return float(self.weights @ self.nodes)

    def density(self, grid: Tensor, sigma: float) -> Tensor:
        """The Gaussian-smoothed density on ``grid``; see :func:`gaussian_density`."""
        return gaussian_density(self.nodes, self.weights, grid, sigma)


def gaussian_density(nodes: Tensor, weights: Tensor, grid: Tensor, sigma: float) -> Tensor:
    """Evaluate sum_j w_j N(t; theta_j, sigma^2) at every point t of ``grid``.

    Args:
        nodes: tensor of size [m], the nodes theta_j.
        weights: tensor of size [m], the weights w_j (summing to 1 gives a probability density).
        grid: tensor of size [g], the points t.
        sigma: standard deviation of the Gaussian kernel, > 0.

    Returns:
        float64 tensor of size [g]; integrates to sum_j w_j over the real line.

    Raises:
        ValueError: mismatched or non-1-D inputs, or sigma <= 0.
    """
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"Invalid sigma: {sigma}; expected a positive number")
    if nodes.dim() != 1 or weights.shape != nodes.shape:
        raise ValueError(
            f"nodes and weights must be 1-D of one size, got {list(nodes.shape)} and "
            f"{list(weights.shape)}"
        )
    if grid.dim() != 1:
        raise ValueError(f"grid must be 1-D, got {list(grid.shape)}")
    t = grid.to(torch.float64)[:, None]
    z = (t - nodes.to(torch.float64)[None, :]) / sigma
    kernel = torch.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
    return kernel @ weights.to(torch.float64)


def _tridiagonal(flat: FlatOperator, v0: Tensor, steps: int) -> tuple[Tensor, int]:
    """Lanczos from unit ``v0`` (:func:`krylov_basis`); returns (T [m, m] float64, products m).

    A probe whose Krylov space becomes invariant stops early: the quadrature is then exact."""
    kb = krylov_basis(lambda v: flat.matvec(v[0]).to(dtype=flat.dtype, device=flat.device)[None],
                      v0[None], steps)
    m = int(kb.dims[0])
    return kb.proj[0, :m, :m].to(device="cpu", dtype=torch.float64), m


def spectral_density(
    op: Any,
    num_probes: int = 4,
    num_steps: int = 80,
    *,
    generator: torch.Generator | None = None,
) -> SpectralDensity:
    """Approximate the eigenvalue density by stochastic Lanczos quadrature.

    Args:
        op: a :class:`HessianOperator`, a symmetric tensor of size [n, n], or any object with
            ``dim`` and ``matvec`` on flat vectors.
        num_probes: number of Rademacher probes, >= 1.
        num_steps: Lanczos steps (products) per probe, >= 1; capped at n.
        generator: random source for the probes.

    Returns:
        A :class:`SpectralDensity` (nodes and weights; weights sum to 1).

    Raises:
        ValueError: bad ``num_probes`` or ``num_steps``, or an unusable operator.

    Example:
        >>> import torch
        >>> from synaprune.curvature import spectral_density
        >>> a = torch.diag(torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=torch.float64))
        >>> sd = spectral_density(a, num_probes=3, num_steps=4)
        >>> round(float(sd.weights.sum()), 12), round(sd.mean, 12)  # trace / n = 2
        (1.0, 2.0)
    """
    flat = as_flat_operator(op)
    for name, value in (("num_probes", num_probes), ("num_steps", num_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Invalid {name}: {value!r}; expected a positive int")
    steps = min(num_steps, flat.dim)
    nodes, weights = [], []
    products = 0
    for _ in range(num_probes):
        z = rademacher(flat.dim, dtype=flat.dtype, device=flat.device, generator=generator)
        t, used = _tridiagonal(flat, z / math.sqrt(flat.dim), steps)
        products += used
        theta, u = torch.linalg.eigh(t)
        nodes.append(theta)
        weights.append(u[0, :] ** 2 / num_probes)
    return SpectralDensity(
        nodes=torch.cat(nodes), weights=torch.cat(weights), num_products=products
    )
