"""Extreme eigenvalues of a symmetric operator by Lanczos with full reorthogonalisation.

Each step multiplies the newest basis vector by the operator (one Hessian-vector product),
orthogonalises the result against *every* basis vector twice (classical Gram-Schmidt, twice is
enough), and stores the projections, so the projected matrix T = V^T H V is known exactly. The
Ritz values (eigenvalues of T) are checked after every product, so the iteration stops at the
first product at which all wanted pairs satisfy the residual test

    ||H y - theta y|| = |beta_m * s_m| <= tol * |theta|,

with y = V s the Ritz vector, s_m its last component and beta_m the norm of the newest residual.
(For a Ritz value within ~eps^(2/3) of zero relative to the largest |theta|, ``|theta|`` is
replaced by that floor so a zero eigenvalue can converge.) The eigenvalue error is then at most
that residual and, for an eigenvalue separated by a gap delta from the rest of the spectrum, about
residual^2 / delta.

The Krylov basis grows without restarts up to ``ncv`` vectors (no restart is the fewest products
for a given accuracy); past that it is thick-restarted (Wu & Simon 2000): the wanted Ritz vectors
and about half of the rest nearest the wanted end(s) are kept, with the residual as the next basis
vector. If the Krylov space becomes invariant before enough pairs are found (an operator with few
distinct eigenvalues, or a repeated eigenvalue), it continues with a random vector orthogonal to
the basis; it then stops only at an invariant subspace whose fresh sequence changed none of the
wanted eigenvalues (so every copy of a repeated wanted eigenvalue has been found).

Caveat, as for every single-vector Krylov method: when the Krylov space never becomes invariant
(n distinct eigenvalues, the usual case for a network's Hessian), an eigenvalue repeated exactly
is found once.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from synaprune.curvature.operator import FlatOperator, as_flat_operator

WHICH = ("largest", "smallest", "both")
_BASIS_BYTES = 512 * 2**20  # memory budget of the default Krylov basis


class ConvergenceWarning(UserWarning):
    """An iterative method stopped at ``maxiter`` before meeting its tolerance."""


@dataclass(frozen=True)
class LanczosResult:
    """What :func:`lanczos` found.

    Attributes:
        eigenvalues: float64 tensor on the CPU of size [k] (``which="largest"`` or
            ``"smallest"``) or [2k] (``"both"``: the k smallest, then the k largest), in ascending
            order like ``torch.linalg.eigvalsh``.
        eigenvectors: tensor of size [n, k] (or [n, 2k]), column i a unit eigenvector for
            ``eigenvalues[i]``, flat layout of the operator, its dtype and device (parameter
            shapes: ``op.unflatten(eigenvectors[:, i])``); None unless asked for.
        residuals: float64 tensor like ``eigenvalues``: the residual norms ||H y - theta y|| of
            the Ritz pairs (from the Lanczos relation, no extra products).
        converged: True when every returned pair met the tolerance.
        num_products: operator-vector products used by this call.
        tol: the relative residual tolerance that was applied.
        which: ``"largest"``, ``"smallest"`` or ``"both"``.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor | None
    residuals: Tensor
    converged: bool
    num_products: int
    tol: float
    which: str


def default_tol(dtype: torch.dtype) -> float:
    """1e-6 for float64, 1e-4 for lower precision (where 1e-6 is near rounding level)."""
    return 1e-6 if dtype == torch.float64 else 1e-4


def _select(theta: Tensor, k: int, which: str) -> Tensor:
    """Indices (into ascending ``theta``) of the wanted Ritz values, ascending."""
    m = theta.shape[0]
    if which == "largest":
        return torch.arange(m - k, m)
    if which == "smallest":
        return torch.arange(0, k)
    return torch.cat([torch.arange(0, k), torch.arange(m - k, m)])


def _keep_on_restart(m: int, k: int, which: str, nkeep: int) -> Tensor:
    """Indices (into ascending Ritz values, m of them) to keep on a thick restart."""
    if which == "largest":
        return torch.arange(m - nkeep, m)
    if which == "smallest":
        return torch.arange(0, nkeep)
    low = nkeep // 2
    return torch.cat([torch.arange(0, low), torch.arange(m - (nkeep - low), m)])


def _orthogonalise(w: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """Classical Gram-Schmidt against the rows of ``basis``, twice. Returns (w', coefficients)."""
    h = basis @ w
    w = w - basis.T @ h
    h2 = basis @ w
    w = w - basis.T @ h2
    return w, h + h2


def _random_orthogonal(
    basis: Tensor, op: FlatOperator, generator: torch.Generator | None
) -> Tensor:
    """A unit vector orthogonal to the rows of ``basis`` (size [n])."""
    for _ in range(5):
        w = torch.randn(op.dim, generator=generator, dtype=torch.float64).to(op.dtype)
        w, _ = _orthogonalise(w.to(op.device), basis)
        norm = torch.linalg.vector_norm(w)
        if norm > 1e-8:
            return w / norm
    raise RuntimeError("could not draw a vector orthogonal to the Krylov basis "
                       f"({basis.shape[0]} vectors in dimension {op.dim})")


def lanczos(
    op: Any,
    k: int = 1,
    *,
    which: str = "largest",
    tol: float | None = None,
    maxiter: int | None = None,
    ncv: int | None = None,
    return_eigenvectors: bool = False,
    v0: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> LanczosResult:
    """The k largest and/or k smallest (most negative) eigenvalues of a symmetric operator.

    Args:
        op: a :class:`HessianOperator`, a symmetric tensor of size [n, n], or any object with
            ``dim`` and ``matvec`` on flat vectors (see :mod:`synaprune.curvature.operator`).
        k: number of eigenvalues from each wanted end, 1 <= k (and 2k <= n for ``"both"``).
        which: ``"largest"`` (algebraically largest), ``"smallest"`` (algebraically smallest, the
            most negative) or ``"both"``.
        tol: relative residual tolerance, ||H y - theta y|| <= tol * |theta| for every wanted
            pair; default 1e-6 in float64, 1e-4 otherwise.
        maxiter: most operator-vector products to spend; default max(1000, 20 * wanted).
        ncv: most basis vectors kept before a thick restart (memory: ncv * n numbers). Default:
            300, or fewer if 300 vectors would take more than 512 MiB, but at least wanted + 20
            (wanted = k, or 2k for ``"both"``), and at most n. No restart is the fewest
            products; a smaller ncv trades products for memory.
        return_eigenvectors: also return the Ritz vectors, size [n, k] (or [n, 2k]).
        v0: starting vector of size [n] (default: standard normal from ``generator``).
        generator: random source for the start vector and any restart vector.

    Returns:
        A :class:`LanczosResult`; eigenvalues ascending.

    Warns:
        ConvergenceWarning: when ``maxiter`` products did not meet ``tol``; the result then holds
            the current (unconverged) Ritz pairs with ``converged=False``.

    Raises:
        ValueError: bad ``k``, ``which``, ``tol``, ``maxiter``, ``ncv`` or ``v0``.

    Example:
        >>> import torch
        >>> from synaprune.curvature import lanczos
        >>> a = torch.diag(torch.arange(-3.0, 97.0, dtype=torch.float64))  # eigenvalues -3..96
        >>> res = lanczos(a, k=2, which="both", generator=torch.Generator().manual_seed(0))
        >>> [round(x) for x in res.eigenvalues.tolist()], res.converged
        ([-3, -2, 95, 96], True)
    """
    flat = as_flat_operator(op)
    n = flat.dim
    if which not in WHICH:
        raise ValueError(f"Invalid which: {which!r}; expected one of {WHICH}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"Invalid k: {k!r}; expected a positive int")
    wanted = 2 * k if which == "both" else k
    if wanted > n:
        raise ValueError(f"Invalid k: {k} asks for {wanted} eigenvalues of a {n} x {n} operator")
    tol = default_tol(flat.dtype) if tol is None else tol
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"Invalid tol: {tol}; expected a positive number")
    maxiter = max(1000, 20 * wanted) if maxiter is None else maxiter
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < wanted:
        raise ValueError(
            f"Invalid maxiter: {maxiter!r}; expected an int >= {wanted} (the number of "
            "eigenvalues asked for)"
        )
    if ncv is None:
        itemsize = torch.empty((), dtype=flat.dtype).element_size()
        budget = _BASIS_BYTES // (n * itemsize)  # vectors that fit in the memory budget
        ncv = min(n, max(wanted + 20, min(300, budget)))
    if isinstance(ncv, bool) or not isinstance(ncv, int) or ncv > n or ncv < min(n, wanted + 2):
        raise ValueError(f"Invalid ncv: {ncv!r}; expected an int in [{min(n, wanted + 2)}, {n}]")
    if v0 is None:
        v0 = torch.randn(n, generator=generator, dtype=torch.float64)
    elif not isinstance(v0, Tensor) or v0.shape != (n,):
        raise ValueError(f"v0 must be a tensor of size [{n}]")
    v0 = v0.to(dtype=flat.dtype, device=flat.device)
    norm0 = torch.linalg.vector_norm(v0)
    if not (norm0 > 0 and torch.isfinite(norm0)):
        raise ValueError("v0 must be a finite, non-zero vector")

    basis = torch.zeros(ncv, n, dtype=flat.dtype, device=flat.device)
    proj = torch.zeros(ncv, ncv, dtype=torch.float64)  # T = V^T H V, kept on the CPU
    basis[0] = v0 / norm0
    j = 0  # index of the basis vector to multiply next; basis[: j + 1] is orthonormal
    products = 0
    floor = torch.finfo(flat.dtype).eps ** (2.0 / 3.0)
    seen_invariant = False  # has the Krylov space become invariant at least once?
    snapshot: Tensor | None = None  # wanted Ritz values at the last invariant subspace
    while True:
        w = flat.matvec(basis[j]).to(dtype=flat.dtype, device=flat.device)
        products += 1
        w, h = _orthogonalise(w, basis[: j + 1])
        h64 = h.to(device="cpu", dtype=torch.float64)
        proj[: j + 1, j] = h64
        proj[j, : j + 1] = h64
        beta = float(torch.linalg.vector_norm(w))
        m = j + 1
        theta, s = torch.linalg.eigh(proj[:m, :m])
        resid = (beta * s[m - 1, :]).abs()
        scale = max(float(theta.abs().max()), 1e-300)
        invariant = beta <= floor * scale
        full = m == n  # the basis spans the whole space: the Ritz values are exact
        done = full
        if m >= wanted:
            idx = _select(theta, k, which)
            bound = tol * torch.clamp(theta[idx].abs(), min=floor * scale)
            if bool((resid[idx] <= bound).all()):
                # In an invariant subspace every Ritz pair has residual 0, but a further copy
                # of a repeated eigenvalue may still be missing: accept only at an invariant
                # subspace whose fresh sequence left the wanted values unchanged (so the first
                # invariant subspace, even one reached just as the pairs converge, never is).
                if not seen_invariant and not invariant:
                    done = True
                elif invariant and snapshot is not None and snapshot.shape == idx.shape:
                    done = full or bool(((theta[idx] - snapshot).abs() <= bound).all())
        if done or products >= maxiter:
            break
        if invariant:
            # The Krylov space is invariant: carry on with a fresh direction.
            seen_invariant = True
            snapshot = theta[_select(theta, k, which)].clone() if m >= wanted else None
            next_vec = _random_orthogonal(basis[:m], flat, generator)
            beta = 0.0
        else:
            next_vec = w / beta
        if m < ncv:
            basis[m] = next_vec
            j = m
            continue
        # Thick restart: keep the wanted Ritz vectors and half of the rest near the wanted ends.
        nkeep = min(ncv - 1, wanted + (ncv - wanted) // 2)
        keep = _keep_on_restart(m, k, which, nkeep)
        s_keep = s[:, keep].to(dtype=flat.dtype, device=flat.device)
        new_basis = s_keep.T @ basis[:m]
        basis.zero_()
        basis[:nkeep] = new_basis
        basis[nkeep] = next_vec
        proj.zero_()
        proj[:nkeep, :nkeep] = torch.diag(theta[keep])
        coupling = beta * s[m - 1, keep]
        proj[nkeep, :nkeep] = coupling
        proj[:nkeep, nkeep] = coupling
        j = nkeep

    idx = _select(theta, k, which)
    eigenvalues = theta[idx].clone()
    residuals = resid[idx].clone()
    converged = done
    if not converged:
        rel = float((residuals / eigenvalues.abs().clamp(min=1e-300)).max())
        why = (
            f"max relative residual {rel:.3g} > tol={tol:g}"
            if rel > tol
            else "repeated eigenvalues not yet confirmed by a fresh Krylov sequence"
        )
        warnings.warn(
            f"lanczos did not converge in {products} products (maxiter={maxiter}): {why}; "
            "raise maxiter or loosen tol",
            ConvergenceWarning,
            stacklevel=2,
        )
    vectors = None
    if return_eigenvectors:
        s_sel = s[:, idx].to(dtype=flat.dtype, device=flat.device)
        vectors = basis[:m].T @ s_sel
        vectors = vectors / torch.linalg.vector_norm(vectors, dim=0, keepdim=True)
    return LanczosResult(
        eigenvalues=eigenvalues,
        eigenvectors=vectors,
        residuals=residuals,
        converged=converged,
        num_products=products,
        tol=float(tol),
        which=which,
    )
