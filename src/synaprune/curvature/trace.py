"""Hutchinson's estimate of the Hessian's trace with Rademacher probes.

For probes z with independent entries +1 or -1, E[z^T H z] = trace(H), and each sample's variance
is 2 * sum_{i != j} H_ij^2 (the diagonal contributes none). The estimate is the mean of
``num_probes`` samples, its standard error the samples' standard deviation over
sqrt(num_probes): a confidence interval, not a guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from synaprune.curvature.operator import as_flat_operator, rademacher


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson's trace estimate.

    Attributes:
        estimate: mean of the samples z^T H z, an unbiased estimate of trace(H).
        std_error: sample standard deviation / sqrt(num_probes) (0 with a single probe is not
            allowed: at least two probes are needed).
        samples: float64 tensor of size [num_probes], the z^T H z values.
        num_products: operator-vector products used (= num_probes).
    """

    estimate: float
    std_error: float
    samples: Tensor
    num_products: int


def hutchinson_trace(
    op: Any, num_probes: int = 100, *, generator: torch.Generator | None = None
) -> TraceEstimate:
    """Estimate trace(H) as the mean of z^T H z over Rademacher probes z.

    Args:
        op: a :class:`HessianOperator`, a symmetric tensor of size [n, n], or any object with
            ``dim`` and ``matvec`` on flat vectors.
        num_probes: number of probes (and products), at least 2.
        generator: random source for the probes (fix its seed for reproducible estimates).

    Returns:
        A :class:`TraceEstimate`.

    Raises:
        ValueError: ``num_probes`` < 2 or an unusable operator.

    Example:
        >>> import torch
        >>> from synaprune.curvature import hutchinson_trace
        >>> a = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))  # trace 55
        >>> hutchinson_trace(a, 10).estimate  # exact for a diagonal matrix: z_i^2 = 1
        55.0
    """
    flat = as_flat_operator(op)
    if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 2:
        raise ValueError(f"Invalid num_probes: {num_probes!r}; expected an int >= 2")
    samples = torch.empty(num_probes, dtype=torch.float64)
    for i in range(num_probes):
        z = rademacher(flat.dim, dtype=flat.dtype, device=flat.device, generator=generator)
        samples[i] = float(z @ flat.matvec(z))
    std_error = float(samples.std(correction=1)) / math.sqrt(num_probes)
    return TraceEstimate(
        estimate=float(samples.mean()),
        std_error=std_error,
        samples=samples,
        num_products=num_probes,
    )
