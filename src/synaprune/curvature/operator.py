"""What the eigen-solvers and estimators accept as a symmetric linear operator.

Anything with a size and a product on flat vectors:

* a :class:`synaprune.curvature.HessianOperator`;
* any object with an integer attribute ``dim`` and a method ``matvec(v)`` mapping a tensor of size
  [dim] to a tensor of size [dim] (``dtype`` and ``device`` attributes are used when present,
  float64 on the CPU otherwise);
* a dense symmetric matrix, a tensor of size [n, n] (handy for tests and small problems).

The operator must be symmetric; a dense matrix is checked, a matrix-free one cannot be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class LinearOperatorLike(Protocol):
    """A symmetric linear operator on flat vectors of size [dim]."""

    dim: int

    def matvec(self, v: Tensor) -> Any:
        """Return the product with ``v``, a tensor of size [dim]."""
        ...


@dataclass
class FlatOperator:
    """A symmetric operator reduced to a product on flat vectors (internal normal form)."""

    matvec: Callable[[Tensor], Tensor]
    dim: int
    dtype: torch.dtype
    device: torch.device


def as_flat_operator(op: Any) -> FlatOperator:
    """Normalise ``op`` (see the module docstring) to a :class:`FlatOperator`.

    Raises:
        ValueError: ``op`` is a tensor that is not a square, symmetric, floating matrix, or an
            object without ``dim`` and ``matvec``.
    """
    if isinstance(op, Tensor):
        if op.dim() != 2 or op.shape[0] != op.shape[1]:
            raise ValueError(f"a dense operator must be a square matrix, got {list(op.shape)}")
        if not op.dtype.is_floating_point:
            raise ValueError(f"a dense operator must be floating point, got {op.dtype}")
        scale = float(op.abs().max()) if op.numel() else 0.0
        asym = float((op - op.T).abs().max()) if op.numel() else 0.0
        if asym > 1e3 * torch.finfo(op.dtype).eps * max(scale, 1e-300) * op.shape[0]:
            raise ValueError(f"a dense operator must be symmetric (max |A - A^T| = {asym:.3g})")
        matrix = op.detach()
        return FlatOperator(lambda v: matrix @ v, op.shape[0], op.dtype, op.device)
    dim = getattr(op, "dim", None)
    has_matvec = callable(getattr(op, "matvec", None))
    if not isinstance(dim, int) or isinstance(dim, bool) or not has_matvec:
        raise ValueError(
            "operator must be a HessianOperator, a square symmetric tensor, or an object with "
            f"an int attribute 'dim' and a method 'matvec'; got {type(op).__name__}"
        )
    if dim < 1:
        raise ValueError(f"operator dimension must be positive, got {dim}")
    dtype = getattr(op, "dtype", torch.float64)
    device = torch.device(getattr(op, "device", "cpu"))

    def matvec(v: Tensor) -> Tensor:
        out = op.matvec(v)
        if not isinstance(out, Tensor) or out.shape != (dim,):
            raise ValueError(f"operator.matvec must return a tensor of size [{dim}]")
        return out

    return FlatOperator(matvec, dim, dtype, device)


def rademacher(
    n: int, *, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """A vector of n independent signs (+1 or -1 with probability 1/2), size [n]."""
    signs = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int8)
    return (signs.to(dtype) * 2 - 1).to(device)
