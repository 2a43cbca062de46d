"""How a run ended, from its final point: global, spurious minimum, saddle, still moving, diverged.

A stop-gap for ``synaprune experiment safran-shamir`` until the lab's own classification (the
``kind`` column of the store, issue 9) is merged: :func:`classify_run` is the one place the
experiment calls, so switching it over is one line. The curvature is exact: the dense Hessian
of the full-batch training loss (``torch.func.hessian``), meant for models of a few hundred
parameters (teacher-student at k = 20 has 400: a 400 x 400 matrix).

Names follow the store's ``kind`` column: ``global`` (the problem's success criterion),
``spurious`` (gradient norm at most ``grad_tol`` and no negative Hessian eigenvalue),
``saddle`` (gradient small, a negative eigenvalue), ``moving`` (the budget ran out with the
gradient above ``grad_tol``), ``diverged``. An eigenvalue counts as negative below
``-eig_rtol * max(|lambda|)``, so that rounding in a flat direction is not read as a saddle;
the smallest eigenvalue itself is returned, so a degenerate minimum can be seen.

Why a small gradient and a positive-definite Hessian name a minimum: by Taylor's theorem the
critical point lies within about ``|g| / lambda_min`` of the final point, and its loss within
about ``|g|^2 / (2 lambda_min)`` of the final loss (Safran & Shamir 2018 make this rigorous).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from synaprune.bench.runner import RunResult
from synaprune.problems import Problem

__all__ = ["FinalPoint", "classify_run", "hessian_eigenvalues"]


def hessian_eigenvalues(problem: Problem, params: dict[str, Tensor]) -> Tensor:
    """Eigenvalues, ascending, of the dense Hessian of the full-batch training loss at ``params``.

    Args:
        problem: The problem (its full-batch or exact loss, buffers from ``build_model(0)``).
        params: Parameters by name, as :attr:`RunResult.params` (float64).

    Returns:
        Float64 tensor of size [P], P the number of parameters.
    """
    model = problem.build_model(0)
    buffers = dict(model.named_buffers())
    base = copy.deepcopy(model).to("meta")
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    flat = torch.cat([params[n].reshape(-1) for n in names]).to(torch.float64)

    def loss(v: Tensor) -> Tensor:
        parts = dict(zip(names, [p.view(s) for p, s in zip(v.split(sizes), shapes, strict=True)],
                         strict=True))
        return problem.functional_loss(base, parts, buffers)

    h = torch.func.hessian(loss)(flat)
    return torch.linalg.eigvalsh(0.5 * (h + h.T))


@dataclass(frozen=True)
class FinalPoint:
    """How one run ended.

    Attributes:
        kind: ``global``, ``spurious``, ``saddle``, ``moving`` or ``diverged``.
        min_eig: Smallest Hessian eigenvalue at the final parameters (None if not computed:
            global, moving and diverged runs).
        saddle_index: Number of negative eigenvalues (None if not computed).
    """

    kind: str
    min_eig: float | None = None
    saddle_index: int | None = None


def classify_run(problem: Problem, result: RunResult, *, grad_tol: float,
                 eig_rtol: float = 1e-9) -> FinalPoint:
    """Name how ``result`` ended (see the module docstring).

    Args:
        problem: The problem it was trained on.
        result: The run.
        grad_tol: Gradient norm at or below which a failed run has stopped moving.
        eig_rtol: Eigenvalues below ``-eig_rtol * max |lambda|`` count as negative.

    Returns:
        A :class:`FinalPoint`; the Hessian is computed only for failed runs whose gradient
        norm is at most ``grad_tol``.
    """
    if result.success:
        return FinalPoint("global")
    if result.status == "diverged" or result.final_grad_norm is None \
            or not math.isfinite(result.final_loss):
        return FinalPoint("diverged")
    if result.final_grad_norm > grad_tol:
        return FinalPoint("moving")
    eig = hessian_eigenvalues(problem, result.params)
    negative = int((eig < -eig_rtol * float(eig.abs().max())).sum())
    return FinalPoint("saddle" if negative else "spurious", float(eig[0]), negative)
