"""Cost of a lab run in gradient-equivalents: one full-batch gradient of one model = 1.

A step's cost is what the method itself computes, from the kind of work it does, with the
constants measured on this machine (``docs/benchmarks.md``):

* a gradient on a batch of B of the N training examples: B / N (1 for full batch and for an
  exact loss);
* per-example gradient statistics (mechanism A, ``synaprune-a``...): :data:`PER_EXAMPLE` times
  that gradient, 1.49x, the closed-form ``rms`` step against plain SGD at batch 512 in
  ``benchmarks/step_cost.py``;
* the activation-gradient penalty (mechanism C): :data:`PENALTY` more times that gradient,
  1.19 = 2.68 (A+B+C with noise on stall) - 1.49 (A alone), same benchmark;
* a closure re-evaluation (``sam``): one more gradient;
* mechanism B's loss guard (``noise_guard``): :data:`GUARD` = 1.29 more gradients per step, the
  two loss evaluations of a kicked step (2.35x gd against 1.06x for the same noise unguarded
  in ``benchmarks/noise_guard.py``). Charged on every step: an upper bound once the noise
  schedule has reached 0, when the guard evaluates nothing;
* a Hessian-vector product: :data:`HVP` = 1.62 gradients (one reuse-graph HVP against a plain
  gradient, ``benchmarks/curvature.py``); ``saddle-free-newton`` pays one gradient plus one
  HVP per Krylov vector it built that step, as counted by the optimizer (``krylov_dims``).

Not counted: elementwise work (noise draws, momentum and Adam moments: no matrix product), the
lab's own monitoring (the full-batch loss evaluated every step to test success, the gradient
norm the stopping rule needs for minibatch methods) and the classification after training.
"""

from __future__ import annotations

from synaprune.bench.methods import Method
from synaprune.problems import Problem

__all__ = ["GUARD", "HVP", "PENALTY", "PER_EXAMPLE", "gradient_cost", "step_cost"]

HVP = 1.62
PER_EXAMPLE = 1.49
PENALTY = 1.19
GUARD = 1.29


def gradient_cost(method: Method, problem: Problem) -> float:
    """Cost of one of the method's gradients: batch_size / N, or 1 for the full batch."""
    if method.batch_size is None or not problem.per_example:
        return 1.0
    data = problem.data("train")
    assert data is not None
    return method.batch_size / data[0].shape[0]


def step_cost(method: Method, problem: Problem, hvps: int = 0) -> float:
    """Cost of one optimizer step of ``method`` on ``problem``, gradient-equivalents.

    Args:
        method: The method.
        problem: The problem (its training-set size N sets the cost of a minibatch).
        hvps: Hessian-vector products the step made (``saddle-free-newton``: its
            ``krylov_dims`` for the model).

    Returns:
        ``g * (PER_EXAMPLE if statistics else 1) + g * PENALTY (if penalised) + g (if a closure
        re-evaluates the gradient) + g * GUARD (if the loss guard is on) + HVP * hvps``,
        g = :func:`gradient_cost`.

    Example:
        >>> from synaprune.bench import get_method
        >>> from synaprune.problems import get_problem
        >>> step_cost(get_method("sam"), get_problem("xor"))
        2.0
    """
    g = gradient_cost(method, problem)
    cost = g * (PER_EXAMPLE if method.per_example_stats else 1.0)
    if method.penalty is not None:
        cost += g * PENALTY
    if method.needs_closure:
        cost += g
    if method.guard_loss:
        cost += g * GUARD
    return cost + HVP * hvps
