"""Lanczos: extreme eigenvalues counted with multiplicity, and the plain Lanczos process.

Two entry points share the same step (multiply the newest basis vector by the operator, one
Hessian-vector product; orthogonalise the result against *every* basis vector twice, classical
Gram-Schmidt, twice is enough; store the projections, so T = V^T H V is known exactly):

* :func:`lanczos`, the eigen-solver: block Lanczos (a band Lanczos, one product at a time) from
  ``block_size`` random start vectors, thick-restarted, with a residual test on every product and
  a multiplicity check before it accepts.
* :func:`krylov_basis`, the plain process: a fixed number of steps from a *given* start vector,
  on one operator or on S stacked operators at once (saddle-free Newton's subspace, the
  quadrature of :func:`synaprune.curvature.spectral_density`).

Why a block. A single Krylov sequence from v sees one vector per distinct eigenvalue: the
component of v in that eigenspace. An eigenvalue repeated exactly (identical hidden units make
the Hessian invariant under their permutation, so it has such eigenvalues; a symmetric start
vector is even exactly orthogonal to the antisymmetric copies) is then found once, and the
k-th "largest" is really a smaller eigenvalue that converges with a small residual: a residual
test cannot see the copy that is missing. A block of b random start vectors has b independent
components in every eigenspace, so each eigenvalue of multiplicity <= b converges with all its
copies, at about the rate of a simple one.

What ``converged=True`` guarantees. Every returned pair meets the residual test

    ||H y - theta y|| <= tol * |theta|

(y a unit Ritz vector; for |theta| below ~eps^(2/3) of the largest |theta| that floor replaces
|theta| so a zero eigenvalue can converge), so each returned value is within that residual of an
eigenvalue, and for an eigenvalue separated by a gap delta within about residual^2 / delta. And
the values are the wanted ones counted with multiplicity, in this sense: every cluster of
returned Ritz values (neighbours within sqrt(tol) relative) that lies wholly inside the wanted
set has fewer members than the number of start vectors used; when one has as many (so a further
copy could be missing), a fresh random start vector orthogonal to the basis is added, the
iteration continues on it alone for as many products as each earlier start vector needed to
converge (the same polynomial degree, which found the copies already seen), then on all of them
until the test passes again, and the check is repeated with the larger block. So a multiplicity
above ``block_size`` costs one such restart per extra copy. Limits: this is a statement about
Krylov spaces from random starts, not a proof: an eigenvalue whose eigenvectors all have
a component below rounding level in every start vector, or one that converges only at a higher
degree than the copies found, can still be missed (as by every Krylov method); an invariant
subspace (an operator with few distinct eigenvalues) ends the same way, with fresh starts until
no cluster is at capacity.

The basis grows without restarts up to ``ncv`` vectors (no restart is the fewest products for a
given accuracy); past that it is thick-restarted (Wu & Simon 2000): the wanted Ritz vectors and
about half of the rest nearest the wanted end(s) are kept, with the pending block residuals.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
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
            order like ``torch.linalg.eigvalsh``, repeated eigenvalues repeated.
        eigenvectors: tensor of size [n, k] (or [n, 2k]), column i a unit eigenvector for
            ``eigenvalues[i]``, flat layout of the operator, its dtype and device (parameter
            shapes: ``op.unflatten(eigenvectors[:, i])``); None unless asked for.
        residuals: float64 tensor like ``eigenvalues``: the residual norms ||H y - theta y|| of
            the Ritz pairs (from the block Lanczos relation, no extra products).
        converged: True when every returned pair met the tolerance and the multiplicity check
            passed (see the module docstring for what that guarantees).
        num_products: operator-vector products used by this call.
        tol: the relative residual tolerance that was applied.
        which: ``"largest"``, ``"smallest"`` or ``"both"``.
        block_size: start vectors used in the end (``block_size`` asked for, plus one per
            multiplicity check that found a cluster at capacity or per invariant subspace).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor | None
    residuals: Tensor
    converged: bool
    num_products: int
    tol: float
    which: str
    block_size: int = 1


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
    """Classical Gram-Schmidt against the rows of ``basis``, twice. Returns (w', coefficients).

    Unbatched: w [n], basis [m, n], coefficients [m]. Batched: w [S, n], basis [S, m, n],
    coefficients [S, m] (each w against its own basis).
    """
    h = (basis @ w.unsqueeze(-1)).squeeze(-1)
    w = w - (h.unsqueeze(-2) @ basis).squeeze(-2)
    h2 = (basis @ w.unsqueeze(-1)).squeeze(-1)
    w = w - (h2.unsqueeze(-2) @ basis).squeeze(-2)
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


# ------------------------------------------------------------------------------ plain process
@dataclass(frozen=True)
class KrylovBasis:
    """What :func:`krylov_basis` built, for S operators (S = 1 when unbatched).

    Attributes:
        basis: tensor of size [S, steps, n]; rows 0..dims[s]-1 of ``basis[s]`` are an orthonormal
            basis of the Krylov space of operator s (row 0 the normalised start), rows past that
            are zero.
        proj: tensor of size [S, steps, steps], T = V^T H V on the used rows and columns, zero
            elsewhere (dtype and device of the start vector).
        dims: long tensor of size [S], the basis vectors per operator (fewer than ``steps`` when
            its Krylov space became invariant, or 0 for a zero or non-finite start).
        finite: bool tensor of size [S], False where a start or a product was not finite (that
            operator's basis then stops at the last finite vector).
    """

    basis: Tensor
    proj: Tensor
    dims: Tensor
    finite: Tensor


def krylov_basis(matvec: Callable[[Tensor], Tensor], v0: Tensor, steps: int) -> KrylovBasis:
    """The Lanczos process with full reorthogonalisation: ``steps`` products from ``v0``.

    Operator s's recursion stops at an invariant subspace (the new residual below eps^(2/3)
    times the largest ||H q_j|| so far) or at a non-finite product; the others go on. Used with a
    given start (the gradient for saddle-free Newton, a probe for spectral density), where the
    Krylov space of that start is what is wanted, so multiplicity is no concern here (see
    :func:`lanczos` for extreme eigenvalues).

    Args:
        matvec: maps a tensor of size [S, n] (row s a vector for operator s) to the products,
            size [S, n]; rows of stopped operators are zero and their products are discarded.
        v0: start vectors of size [S, n] (any non-zero norm; normalised here).
        steps: most products (basis vectors) per operator, >= 1; each call of ``matvec`` is one
            product for every operator.

    Returns:
        A :class:`KrylovBasis`.
    """
    s, n = v0.shape
    k = min(steps, n)
    dtype, device = v0.dtype, v0.device
    floor = torch.finfo(dtype).eps ** (2.0 / 3.0)
    norm0 = torch.linalg.vector_norm(v0, dim=1)  # [S]
    finite = torch.isfinite(norm0)
    active = finite & (norm0 > 0)  # operators whose recursion is still running
    basis = torch.zeros(s, k, n, dtype=dtype, device=device)  # V^T: row j is q_{j+1}
    proj = torch.zeros(s, k, k, dtype=dtype, device=device)  # T = V^T H V
    dims = torch.zeros(s, dtype=torch.long, device=device)
    scale = torch.zeros(s, dtype=dtype, device=device)  # largest ||H q_j|| so far
    # Where an operator stops, 0/0 may appear below; torch.where discards it.
    basis[:, 0] = torch.where(active[:, None], v0 / norm0[:, None], 0.0)
    for j in range(k):
        dims += active.long()
        w = torch.where(active[:, None], matvec(basis[:, j]), 0.0)
        finite &= torch.isfinite(w).all(dim=1)
        w = torch.where(finite[:, None], w, 0.0)
        scale = torch.maximum(scale, torch.linalg.vector_norm(w, dim=1))
        # The coefficients are the exact projections V^T H q_j (column j of T).
        w, h = _orthogonalise(w, basis[:, : j + 1])
        proj[:, : j + 1, j] = h
        proj[:, j, : j + 1] = h
        if j + 1 == k:
            break
        beta = torch.linalg.vector_norm(w, dim=1)
        active &= finite & (beta > floor * scale)  # else: invariant subspace, stop
        basis[:, j + 1] = torch.where(active[:, None], w / beta[:, None], 0.0)
        if not bool(active.any()):
            break
    used = torch.arange(k, device=device)[None, :] < dims[:, None]  # [S, k]
    mask = (used[:, :, None] & used[:, None, :]).to(dtype)
    return KrylovBasis(basis=basis, proj=proj * mask, dims=dims, finite=finite)


# ------------------------------------------------------------------------------ eigen-solver
def _starts_needed(theta: Tensor, idx: Tensor, starts: int, ctol: float, floor: float) -> int:
    """Start vectors the multiplicity check asks for (0: none beyond ``starts``).

    Neighbouring Ritz values within ``ctol`` relative (``floor`` absolute) form a cluster. A
    cluster wholly inside the wanted set with at least ``starts`` members may be missing a copy:
    ask for one start vector more than its size. A cluster that reaches past the wanted set
    already has more copies than the wanted values need.
    """
    m = theta.shape[0]
    wanted = torch.zeros(m, dtype=torch.bool)
    wanted[idx] = True
    need, i = 0, 0
    while i < m:
        j = i
        while j + 1 < m and float(theta[j + 1] - theta[j]) <= ctol * max(
            abs(float(theta[j])), abs(float(theta[j + 1])), floor
        ):
            j += 1
        size = j - i + 1
        if bool(wanted[i : j + 1].all()) and size >= starts:
            need = max(need, size + 1)
        i = j + 1
    return need


def lanczos(
    op: Any,
    k: int = 1,
    *,
    which: str = "largest",
    tol: float | None = None,
    maxiter: int | None = None,
    ncv: int | None = None,
    block_size: int = 2,
    return_eigenvectors: bool = False,
    v0: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> LanczosResult:
    """The k largest and/or k smallest (most negative) eigenvalues, counted with multiplicity.

    Block Lanczos from ``block_size`` start vectors, with the multiplicity check of the module
    docstring (which adds start vectors while a cluster of found copies is at capacity).

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
        block_size: start vectors of the block, 1 <= block_size <= n (default 2). A multiplicity
            up to block_size costs no check; each copy beyond costs a restart. 1 is a single
            Krylov sequence whose every result is checked by a fresh start (about twice the
            products); larger blocks cost more products on a spectrum without repeats.
        return_eigenvectors: also return the Ritz vectors, size [n, k] (or [n, 2k]).
        v0: first start vector, size [n] (default: standard normal from ``generator``); the
            other start vectors are always random, so a v0 orthogonal to some copies (a symmetric
            vector for a symmetric model) does not hide them.
        generator: random source for the start vectors and any fresh start.

    Returns:
        A :class:`LanczosResult`; eigenvalues ascending.

    Warns:
        ConvergenceWarning: when ``maxiter`` products did not meet ``tol`` or did not finish the
            multiplicity check; the result then holds the current Ritz pairs with
            ``converged=False``.

    Raises:
        ValueError: bad ``k``, ``which``, ``tol``, ``maxiter``, ``ncv``, ``block_size`` or ``v0``.

    Example:
        >>> import torch
        >>> from synaprune.curvature import lanczos
        >>> a = torch.diag(torch.tensor([-3.0, -3.0, -3.0] + list(range(97)), dtype=torch.float64))
        >>> res = lanczos(a, k=2, which="both", generator=torch.Generator().manual_seed(0))
        >>> [round(x) for x in res.eigenvalues.tolist()], res.converged  # -3 three times
        ([-3, -3, 95, 96], True)
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
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not (
        1 <= block_size <= n
    ):
        raise ValueError(f"Invalid block_size: {block_size!r}; expected an int in [1, {n}]")
    given_v0 = v0 is not None
    if v0 is None:
        v0 = torch.randn(n, generator=generator, dtype=torch.float64)
    elif not isinstance(v0, Tensor) or v0.shape != (n,):
        raise ValueError(f"v0 must be a tensor of size [{n}]")
    v0 = v0.to(dtype=flat.dtype, device=flat.device)
    norm0 = torch.linalg.vector_norm(v0)
    if not (norm0 > 0 and torch.isfinite(norm0)):
        raise ValueError("v0 must be a finite, non-zero vector")

    dtype, device = flat.dtype, flat.device
    floor = torch.finfo(dtype).eps ** (2.0 / 3.0)
    ctol = math.sqrt(tol)  # Ritz values this close (relative) count as copies of one eigenvalue
    basis = torch.zeros(ncv, n, dtype=dtype, device=device)
    proj = torch.zeros(ncv, ncv, dtype=torch.float64)  # T = V^T H V, kept on the CPU
    m = 0  # basis[:m] is orthonormal
    # Pending block residuals ("candidates"), each orthogonal to the basis, with H V = V T + P^T C:
    # row q of C (coef[q], size [ncv]) says how candidate q enters the products of the basis.
    cands: list[Tensor] = []
    coef: list[Tensor] = []
    seq: list[int] = []  # start vector (sequence) each candidate descends from
    seq_products: list[int] = []  # products spent on each sequence
    frozen: set[int] = set()  # sequences paused while fresh ones run (the multiplicity check)
    target = 0  # products each fresh sequence gets at most before the others resume
    check_start = 0  # basis index of the check's first vector, while check_valid
    check_valid = False  # no thick restart since the check began

    def start_sequence(vec: Tensor) -> None:
        cands.append(vec)
        coef.append(torch.zeros(ncv, dtype=torch.float64))
        seq.append(len(seq_products))
        seq_products.append(0)

    # The multiplicity check counts random start vectors only: a given v0 may be orthogonal to
    # whole eigenspaces (a symmetric v0 of a symmetric model is, to the antisymmetric copies).
    random_starts = block_size - 1 if given_v0 else block_size
    start_sequence(v0 / norm0)
    for _ in range(block_size - 1):
        start_sequence(torch.randn(n, generator=generator, dtype=torch.float64).to(dtype=dtype,
                                                                                   device=device))

    def residual_norms(s_sel: Tensor) -> Tensor:
        """||H V s - theta V s|| = ||P^T C s|| for the columns of s_sel (size [m, r])."""
        if not cands:
            return torch.zeros(s_sel.shape[1], dtype=torch.float64)
        c = torch.stack(coef)[:, :m] @ s_sel  # [p, r]
        r = torch.stack(cands).T @ c.to(dtype=dtype, device=device)  # [n, r]
        return torch.linalg.vector_norm(r, dim=0).to(device="cpu", dtype=torch.float64)

    def fresh_converged(start: int, fresh: int) -> bool:
        """Have the fresh sequences converged on their own, as a block Lanczos on the operator
        compressed to the complement of basis[:start] (whose products they are)? True when
        their ``fresh`` extreme Ritz pairs at each wanted end meet the residual test."""
        size = m - start
        ends = 2 if which == "both" else 1
        if size < ends * fresh:
            return False
        mu, z = torch.linalg.eigh(proj[start:m, start:m])
        sel = _select(mu, fresh, which)
        mine = [i for i, q in enumerate(seq) if q not in frozen]
        if mine:
            c = torch.stack([coef[i] for i in mine])[:, start:m] @ z[:, sel]
            r = torch.stack([cands[i] for i in mine]).T @ c.to(dtype=dtype, device=device)
            resid = torch.linalg.vector_norm(r, dim=0).to(device="cpu", dtype=torch.float64)
        else:
            resid = torch.zeros(sel.shape[0], dtype=torch.float64)
        return bool((resid <= tol * torch.clamp(mu[sel].abs(), min=floor * scale)).all())

    products = 0
    scale = 1e-300  # largest |Ritz value| so far: the scale of the deflation test
    theta = s = None
    done = False
    while True:
        # (a) Absorb the oldest candidate of a running sequence into the basis and multiply it.
        progressed = False
        while not progressed:
            i = next((i for i, q in enumerate(seq) if q not in frozen), None)
            if i is None:
                break
            vec, q = cands.pop(i), seq[i]
            del coef[i], seq[i]
            vec, _ = _orthogonalise(vec, basis[:m])  # keep it orthogonal despite rounding
            alpha = float(torch.linalg.vector_norm(vec))
            if not alpha > floor * scale:
                continue  # deflated: its direction is (numerically) in the basis already
            if m == ncv:
                # Thick restart: keep the wanted Ritz vectors and half of the rest near the
                # wanted ends; the candidates stay as they are (orthogonal to the new basis).
                assert theta is not None and s is not None
                nkeep = min(ncv - 1, wanted + (ncv - wanted) // 2)
                s_keep = s[:, _keep_on_restart(m, k, which, nkeep)]
                basis[:nkeep] = s_keep.T.to(dtype=dtype, device=device) @ basis[:m]
                basis[nkeep:] = 0.0
                kept = theta[_keep_on_restart(m, k, which, nkeep)]
                proj.zero_()
                proj[:nkeep, :nkeep] = torch.diag(kept)
                for row in coef:
                    row[:nkeep] = row[:m] @ s_keep
                    row[nkeep:] = 0.0
                m = nkeep
                check_valid = False
            v = vec / alpha
            for t, other in enumerate(cands):
                cands[t] = other - v * (v @ other)
            basis[m] = v
            m += 1
            w = flat.matvec(v).to(dtype=dtype, device=device)
            products += 1
            seq_products[q] += 1
            w, h = _orthogonalise(w, basis[:m])
            h64 = h.to(device="cpu", dtype=torch.float64)
            proj[:m, m - 1] = h64
            proj[m - 1, :m] = h64
            row = torch.zeros(ncv, dtype=torch.float64)
            row[m - 1] = 1.0
            cands.append(w)
            coef.append(row)
            seq.append(q)
            progressed = True
        if not progressed and frozen:
            frozen.clear()  # the fresh sequences ended in an invariant subspace: resume all
            continue

        # (b) Ritz pairs, residuals, and the acceptance test.
        theta, s = torch.linalg.eigh(proj[:m, :m])
        scale = max(scale, float(theta.abs().max()), 1e-300)
        if frozen and (
            all(seq_products[q] >= target for q in set(seq) - frozen)
            or (check_valid and fresh_converged(check_start, len(seq_products) - len(frozen)))
        ):
            frozen.clear()
        if m == n:
            done = True  # the basis spans the whole space: the Ritz values are exact
        elif not frozen and m >= wanted:
            idx = _select(theta, k, which)
            resid = residual_norms(s[:, idx])
            bound = tol * torch.clamp(theta[idx].abs(), min=floor * scale)
            if bool((resid <= bound).all()):
                need = _starts_needed(theta, idx, random_starts, ctol, floor * scale)
                if need == 0:
                    done = True
                else:
                    # A cluster is at capacity: run fresh random starts, orthogonal to the basis,
                    # until they converge on their own (or as far as the others ran).
                    target = max(seq_products)
                    frozen = set(range(len(seq_products)))
                    check_start, check_valid = m, True
                    for _ in range(need - random_starts):
                        start_sequence(_random_orthogonal(basis[:m], flat, generator))
                    random_starts = need
        if not done and not cands:
            # An invariant subspace short of the answer: go on from a fresh direction.
            start_sequence(_random_orthogonal(basis[:m], flat, generator))
            random_starts += 1
        if done or products >= maxiter:
            break

    assert theta is not None and s is not None
    idx = _select(theta, k, which)
    eigenvalues = theta[idx].clone()
    residuals = residual_norms(s[:, idx])
    converged = done
    if not converged:
        rel = float((residuals / eigenvalues.abs().clamp(min=1e-300)).max())
        why = (
            f"max relative residual {rel:.3g} > tol={tol:g}"
            if rel > tol
            else "a fresh start vector was still checking for further copies of a repeated "
            "eigenvalue"
        )
        warnings.warn(
            f"lanczos did not converge in {products} products (maxiter={maxiter}): {why}; "
            "raise maxiter or loosen tol",
            ConvergenceWarning,
            stacklevel=2,
        )
    vectors = None
    if return_eigenvectors:
        s_sel = s[:, idx].to(dtype=dtype, device=device)
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
        block_size=len(seq_products),
    )
