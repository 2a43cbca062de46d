"""How a lab run ended: its kind (global, spurious minimum, saddle, still moving, unstable,
diverged), from the stopped run's loss, gradient, curve and, where the gradient is small, the
Hessian at its final parameters.

The kinds, tested in this order (the definitions of ``docs/definitions.md``, "How a lab run
ends"):

* ``diverged``: the loss became NaN or infinite, or rose above :func:`divergence_bound`
  (a million times the run's starting excess loss): a finite loss of 1e151 is a blow-up, not a
  run still moving.
* ``global``: the problem's success criterion, L <= global_loss + tolerance. No Hessian.
* the gradient is *small* (:func:`gradient_threshold`): the Hessian's extreme eigenvalues by
  :func:`synaprune.curvature.lanczos` on Hessian-vector products at the final parameters
  (:func:`hessian_extremes`), then

  - ``saddle``: an eigenvalue below ``-NEG_EIG_TOL * max|eig|`` (the tolerance of
    :func:`synaprune.diagnose.diagnose`); ``saddle_index`` is how many were found;
  - ``spurious``: none, and the nearby minimum cannot be a global one: to second order the loss
    can still fall by at most ||g||^2 / (2 lambda), lambda = max(min_eig, NEG_EIG_TOL max|eig|),
    and L minus that bound is still above global_loss + tolerance;
  - ``moving`` otherwise (no negative curvature, but the gradient, small as it is, could still
    carry the run to the global level).

* otherwise (gradient not small): ``unstable`` when, over the second half of the step budget,
  the loss went up (summed over every step) more than it came down in all
  (:func:`is_unstable`), else ``moving``.

The Hessian check is done once per stopped run, after training, on its stored parameters: never
on the training path. It is skipped for ``global`` and ``diverged`` runs and for runs whose
gradient is not small (cheap: those are most runs).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from synaprune.curvature import ConvergenceWarning, lanczos
from synaprune.diagnose._diagnose import NEG_EIG_TOL
from synaprune.problems import Problem

__all__ = [
    "DIVERGED_FACTOR",
    "KINDS",
    "KIND_LABELS",
    "NEG_EIG_TOL",
    "REL_GRAD_TOL",
    "UNSTABLE_FLOOR",
    "Outcome",
    "classify",
    "classify_results",
    "divergence_bound",
    "gradient_threshold",
    "hessian_extremes",
    "is_unstable",
    "kind_label",
]

KINDS = ("global", "spurious", "saddle", "moving", "unstable", "diverged")
KIND_LABELS = {"global": "global", "spurious": "spurious minimum", "saddle": "saddle",
               "moving": "still moving", "unstable": "unstable", "diverged": "diverged"}

# Small gradient, relative to the problem's scale: ||g|| max(||theta||, 1) / max(L - L*, tol)
# <= REL_GRAD_TOL, L* the global loss and tol the problem's success tolerance. The numerator is
# (to first order) the change of the loss over a move as large as the parameters themselves; the
# denominator the excess loss still to explain. Below 1e-6, a move of the parameters' own size
# changes the loss by a millionth of its excess: nothing is left to descend at this order. It is
# the relative gradient of synaprune.diagnose (there with L, and 1e-3) measured against the
# excess loss; on teacher-student (L - L* ~ 0.03, ||theta|| ~ 4) it is ||g|| ~ 1e-8, the
# tolerance the issue asks for, and 1e4 times looser than Safran & Shamir's 1e-12.
REL_GRAD_TOL = 1e-6

# Unstable: over the second half of the budget (steps t > T/2), the loss's rises, summed over
# every step, exceed its net decrease L_{T/2} - L_end: the loss oscillates, or climbs, more than
# it descends. Gradient descent with a step below 2 / lambda_max lowers the loss at every step
# (no rises at all), and a run still descending, however slowly, has rises well below its net
# decrease; a step above 2 / lambda_max (gd:lr=0.5 at teacher-student k = 14: a period-2 orbit
# between two loss levels) rises as much as it falls. Rises below UNSTABLE_FLOOR times the
# excess loss are rounding. For a stochastic method, rises that outweigh the progress mean its
# noise is too large for the loss level reached: the same name, the same fact.
UNSTABLE_FLOOR = 1e-9

# A run whose excess loss grows past this multiple of its starting excess has blown up: float64
# lets a loss reach 1e300 before it overflows, and a run on its way there (or coming back down
# from 1e150 with weights of 1e75) is not "still moving" or merely "unstable". No run of the
# lab's studies that climbed past it came back to a success; one unstable step (|1 - lr
# lambda| > 1) needs many steps to get there, so the unstable kind keeps its meaning.
DIVERGED_FACTOR = 1e6

# Smallest eigenvalues asked of Lanczos at first (from each end), and at most (the index is then
# a lower bound: "found").
_K_START, _K_MAX = 4, 64


def kind_label(kind: str | None) -> str:
    """The label users see for a stored kind: ``"spurious minimum"``, ``"still moving"``, ...;
    ``"not recorded"`` for None (an older database or row)."""
    return "not recorded" if kind is None else KIND_LABELS.get(kind, kind)


@dataclass(frozen=True)
class Outcome:
    """How a run ended.

    Attributes:
        kind: One of :data:`KINDS`.
        min_eig: Smallest Hessian eigenvalue at the final parameters, None if not computed.
        saddle_index: Eigenvalues below ``-NEG_EIG_TOL * max|eig|`` found (a lower bound when
            all ``_K_MAX`` smallest are negative), None if not computed.
        max_eig: Largest Hessian eigenvalue, None if not computed.
        hvps: Hessian-vector products spent (0 without a Hessian check).
    """

    kind: str
    min_eig: float | None = None
    saddle_index: int | None = None
    max_eig: float | None = None
    hvps: int = 0


def divergence_bound(problem: Problem, start_loss: float | Tensor) -> float | Tensor:
    """Loss above which a run counts as diverged: L* + DIVERGED_FACTOR * max(L_0 - L*, tol).

    Args:
        problem: The problem (L* its ``global_loss``, tol its ``tolerance``).
        start_loss: The run's loss at step 0, a float or a tensor of them (one per seed).

    Returns:
        The bound, of the type of ``start_loss``; NaN or inf when ``start_loss`` is (a run that
        starts non-finite is diverged by that already).
    """
    excess = start_loss - problem.global_loss
    if isinstance(excess, Tensor):
        excess = excess.clamp(min=problem.tolerance)
    else:
        excess = max(excess, problem.tolerance) if math.isfinite(excess) else excess
    return problem.global_loss + DIVERGED_FACTOR * excess


def gradient_threshold(problem: Problem, loss: float | Tensor, param_norm: float | Tensor,
                       grad_tol: float | None = None) -> float | Tensor:
    """The gradient norm below which a run's gradient counts as small.

    Args:
        problem: The problem (its ``global_loss`` and ``tolerance`` set the scale).
        loss: Training loss L at the point (a float, or a tensor of size [S] for S seeds).
        param_norm: ||theta|| at the point (float or [S]).
        grad_tol: An absolute tolerance on ||g||; None for the relative default,
            ``REL_GRAD_TOL * max(L - global_loss, tolerance) / max(||theta||, 1)``.

    Returns:
        The threshold (same type as ``loss``); ||g|| <= threshold is small.
    """
    if grad_tol is not None:
        if isinstance(loss, Tensor):
            return torch.full_like(loss, float(grad_tol))
        return float(grad_tol)
    if isinstance(loss, Tensor):
        excess = (loss - problem.global_loss).clamp(min=problem.tolerance)
        return REL_GRAD_TOL * excess / torch.as_tensor(param_norm, dtype=loss.dtype).clamp(min=1)
    return REL_GRAD_TOL * max(float(loss) - problem.global_loss, problem.tolerance) / max(
        float(param_norm), 1.0)


def is_unstable(problem: Problem, final_loss: float, tail_start: float | None,
                tail_rise: float) -> bool:
    """Whether the loss oscillated or climbed over the second half of the budget:
    ``tail_rise > max(tail_start - final_loss, UNSTABLE_FLOOR * max(tail_start - L*, tol))``.

    Args:
        problem: The problem (L* its ``global_loss``, tol its ``tolerance``).
        final_loss: Loss at the end (finite).
        tail_start: Loss at step ``method.settled_from(budget)`` (``budget // 2``, or where
            the method's noise schedule ends if later); None (the run stopped earlier) is never
            unstable.
        tail_rise: Sum of max(0, L_t - L_{t-1}) over the steps after that one.
    """
    if tail_start is None:
        return False
    floor = UNSTABLE_FLOOR * max(tail_start - problem.global_loss, problem.tolerance)
    return tail_rise > max(tail_start - final_loss, floor)


def hessian_extremes(problem: Problem, params: Mapping[str, Tensor], *, seed: int = 0,
                     buffers: Mapping[str, Tensor] | None = None
                     ) -> tuple[list[float], float, int, int]:
    """Smallest eigenvalues and the largest of the training loss's Hessian at ``params``.

    Lanczos (:func:`synaprune.curvature.lanczos`, ``which="both"``, counted with multiplicity)
    on reuse-graph Hessian-vector products of ``problem.functional_loss`` (full batch,
    or the exact loss). The k smallest are asked first (k = 4); while all k are negative, k is
    doubled (up to 64, or n / 2), so the number of negative eigenvalues is found exactly up to
    that.

    Args:
        problem: The problem.
        params: Parameters by name (as ``named_parameters``), e.g. a stored run's.
        seed: Seed of Lanczos's start vectors.
        buffers: The model's buffers; default those of ``problem.build_model(seed)``.

    Returns:
        ``(smallest ascending, largest, num_negative, hvps)``: num_negative counts the
        eigenvalues below ``-NEG_EIG_TOL * max|eig|`` among the smallest found.

    Warns:
        ConvergenceWarning: When Lanczos stopped before its tolerance (the values are then
            approximate), naming the problem and seed.
    """
    model = problem.build_model(seed)
    base = copy.deepcopy(model).to("meta")
    names = list(params)
    if buffers is None:
        buffers = {k: v.detach() for k, v in model.named_buffers()}
    flat0 = torch.cat([params[k].detach().reshape(-1) for k in names]).to(torch.float64)
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]
    n = flat0.numel()

    def loss(flat: Tensor) -> Tensor:
        parts = dict(zip(names, (p.view(s) for p, s in zip(flat.split(sizes), shapes,
                                                          strict=True)), strict=True))
        return problem.functional_loss(base, parts, buffers)

    # Reuse-graph products (as HessianOperator's default): one gradient with its graph, then
    # each H v is one backward through it.
    point = flat0.clone().requires_grad_(True)
    with torch.enable_grad():
        g = torch.autograd.grad(loss(point), point, create_graph=True)[0]
    count = [0]

    class _Op:
        dim = n
        dtype = torch.float64

        @staticmethod
        def matvec(v: Tensor) -> Tensor:
            count[0] += 1
            if not g.requires_grad:  # a loss linear in the parameters
                return torch.zeros_like(v)
            return torch.autograd.grad(g, point, v, retain_graph=True)[0]

    if n == 1:
        val = float(_Op.matvec(torch.ones(1, dtype=torch.float64))[0])
        return [val], val, int(val < 0), count[0]
    k = min(_K_START, n // 2)
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # said below, with the run
            res = lanczos(_Op(), k, which="both", generator=torch.Generator().manual_seed(seed))
        if not res.converged:
            warnings.warn(f"{problem.spec}, seed {seed}: Lanczos stopped after "
                          f"{res.num_products} products before meeting its tolerance; the "
                          "run's min_eig and saddle_index are approximate",
                          ConvergenceWarning, stacklevel=2)
        eig = res.eigenvalues.tolist()
        smallest, largest = eig[:k], eig[-1]
        cut = -NEG_EIG_TOL * max(abs(smallest[0]), abs(largest))
        negative = sum(1 for v in smallest if v < cut)
        if negative < k or 2 * k > min(n // 2, _K_MAX):
            return smallest, largest, negative, count[0]
        k = min(2 * k, n // 2, _K_MAX)


def classify(problem: Problem, *, status: str, final_loss: float,
             final_grad_norm: float | None, params: Mapping[str, Tensor],
             tail_start: float | None = None, tail_rise: float = 0.0,
             grad_tol: float | None = None, seed: int = 0) -> Outcome:
    """The kind of a stopped run (see the module docstring for the rules, in order).

    Args:
        problem: The problem.
        status: The runner's status, ``"ok"``, ``"diverged"`` or ``"budget"``.
        final_loss: Training loss at the end.
        final_grad_norm: Full-batch gradient norm at the end (None: unknown, read as not
            small).
        params: Final parameters by name.
        tail_start, tail_rise: The run's loss at step ``method.settled_from(budget)`` and its
            rises after that
            (:class:`synaprune.bench.runner.RunResult`), for :func:`is_unstable`.
        grad_tol: Absolute gradient tolerance, or None for the relative default
            (:func:`gradient_threshold`).
        seed: Seed of Lanczos's start vectors.

    Returns:
        The :class:`Outcome`.
    """
    if status == "diverged" or not math.isfinite(final_loss):
        return Outcome("diverged")
    if status == "ok" or problem.solved(final_loss):
        return Outcome("global")
    theta = math.sqrt(sum(float(p.detach().double().square().sum()) for p in params.values()))
    small = (final_grad_norm is not None
             and final_grad_norm <= gradient_threshold(problem, final_loss, theta, grad_tol))
    if not small:
        unstable = is_unstable(problem, final_loss, tail_start, tail_rise)
        return Outcome("unstable" if unstable else "moving")
    smallest, largest, negative, hvps = hessian_extremes(problem, params, seed=seed)
    min_eig = smallest[0]
    common = {"min_eig": min_eig, "saddle_index": negative, "max_eig": largest, "hvps": hvps}
    if negative:
        return Outcome("saddle", **common)
    curvature = max(min_eig, NEG_EIG_TOL * max(abs(min_eig), abs(largest)))
    assert final_grad_norm is not None
    drop = final_grad_norm ** 2 / (2 * curvature) if curvature > 0 else math.inf
    if final_loss - drop > problem.global_loss + problem.tolerance:
        return Outcome("spurious", **common)
    return Outcome("moving", **common)


def classify_results(problem: Problem, results: Sequence, grad_tol: float | None = None
                     ) -> int:
    """Set ``kind``, ``min_eig`` and ``saddle_index`` of runner results in place.

    Args:
        problem: The problem.
        results: :class:`synaprune.bench.runner.RunResult` objects.
        grad_tol: As for :func:`classify`.

    Returns:
        Hessian-vector products spent in all.
    """
    hvps = 0
    for r in results:
        out = classify(problem, status=r.status, final_loss=r.final_loss,
                       final_grad_norm=r.final_grad_norm, params=r.params,
                       tail_start=r.tail_start, tail_rise=r.tail_rise, grad_tol=grad_tol,
                       seed=r.seed)
        r.kind, r.min_eig, r.saddle_index = out.kind, out.min_eig, out.saddle_index
        hvps += out.hvps
    return hvps
