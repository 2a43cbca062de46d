"""Train many seeds of one (problem, method) at once, vectorised over seeds.

The S models of a batch become stacked leaf tensors of size [S, ...]
(``torch.func.stack_module_state``); the loss of every seed is ``problem.stacked_loss`` (the exact
loss's own stacked form where the problem has one, else ``vmap`` of
``problem.functional_loss``; minibatch losses are ``vmap`` of it); the sum over seeds is
back-propagated once, which gives each seed its own exact gradient; and ONE ordinary optimizer
(``method.make_optimizer``) steps the stacked tensors. Every supported update is elementwise or
per model, so this equals S separate runs.

A run's protocol, shared by :func:`run_seeds` and the plain single-model loop :func:`run_single`:
at step t = 0, 1, ... the full-batch (or exact) training loss L_t at theta_t is evaluated; a
non-finite L_t, or one above :func:`synaprune.bench.kinds.divergence_bound` of L_0 (a blow-up
that has not overflowed yet), ends the run as ``diverged``; ``problem.solved(L_t)`` ends it as
``ok`` (success, ``steps_to_success = t``); t == budget ends it as ``budget``; otherwise the
gradient is taken (on the full batch, or on the seed's own minibatch) and the optimizer steps.
``steps`` is the number of optimizer steps taken and ``final_loss`` is L at the end.

With ``until_converged``, a run also stops at step t (status ``budget``, before its t-th step)
once its full-batch training-loss gradient at theta_t is small
(:func:`synaprune.bench.kinds.gradient_threshold`).
Every result carries its ``cost`` (:mod:`synaprune.bench.cost`, summed over the steps taken) and,
after training, its kind (:mod:`synaprune.bench.kinds`; the Hessian check runs then, once per
stopped run, not on the training path).

A run that stops (success, divergence, budget or convergence) frees its slot: its result is taken
at the moment it stopped, and it leaves the stacked tensors, the optimizer's state
(:func:`synaprune.optim._stacked.select_models`) and the runner's per-seed tensors before the
step, so every later step computes only the runs still going (a diverged run's NaN never reaches
an update).

Noise: seed s's optimizer noise comes from its own generator, :func:`noise_generator` (s), in both
runners (the stacked optimizer gets the S generators and ``num_models=S``). Methods that need a
closure (``method.needs_closure``, e.g. ``sam``) get one that re-evaluates the loss on the same
batch at the current parameters and back-propagates; methods that differentiate the loss
themselves (``method.loss_closure``, ``saddle-free-newton``) get one that returns it with its
graph and does not back-propagate (in :func:`run_seeds`: the sum over the seeds).
Methods with a loss guard (``method.guard_loss``, SynaPrune's ``noise_guard``) get
``step(guard=fn)``, fn the training loss at the current parameters on the step's batch, forward
only, without the penalty of mechanism C (in :func:`run_seeds`: the [S] losses, one per seed; a
stopped seed's value is irrelevant, its parameters are restored after the step). Options
relative to the budget left unset take it (``method.for_budget(steps)``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.func import grad, stack_module_state, vmap

from synaprune.bench.cost import HVP, step_cost
from synaprune.bench.kinds import classify_results, divergence_bound, gradient_threshold
from synaprune.bench.methods import GDRestarts, Method
from synaprune.bench.penalty import StackedPenalty, hidden_module_names
from synaprune.optim import ActivationGradientPenalty
from synaprune.optim._stacked import select_models
from synaprune.probes import PerExampleGradStats, per_example_sums
from synaprune.probes import _fields as fields
from synaprune.problems import Problem

__all__ = [
    "MinibatchSampler",
    "RunResult",
    "check_compatible",
    "curve_steps",
    "noise_generator",
    "run_seeds",
    "run_single",
]

# Odd 64-bit multiplier (the golden ratio's) that spreads seeds for the noise generators, so
# seed s's noise stream differs from its minibatch stream (seeded with s itself).
_NOISE_MIX = 0x9E3779B97F4A7C15


def noise_generator(seed: int) -> torch.Generator:
    """The optimizer-noise generator of the run with this seed (CPU).

    Args:
        seed: The run's seed.

    Returns:
        ``torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + 1) mod 2**64)``.
    """
    return torch.Generator().manual_seed((int(seed) * _NOISE_MIX + 1) % 2**64)


@dataclass
class RunResult:
    """Outcome of one run (one seed of one problem and method).

    Attributes:
        seed: Model seed (also seeds the run's minibatch order).
        status: ``"ok"`` (reached the global loss within tolerance), ``"diverged"`` (the loss
            became NaN or infinite, or rose above
            :func:`synaprune.bench.kinds.divergence_bound`) or ``"budget"`` (ran out of
            steps).
        success: ``status == "ok"``.
        final_loss: Training loss at the end (when diverged: NaN, inf, or the finite loss
            above the bound at which the run stopped).
        best_loss: Lowest finite training loss seen (inf if none).
        steps: Optimizer steps taken.
        steps_to_success: Steps when the problem was solved, or None.
        wall_time: Seconds; for a batch of S seeds, the batch's time divided by S.
        curve: Downsampled ``[step, loss, grad_norm]`` triples (about ``curve_points`` of
            them, always with the first and the last step); ``grad_norm`` is the norm of the
            gradient taken at that step (the minibatch's, or the penalised one, for methods
            that step on those), and at the final point ``final_grad_norm``. Non-finite
            values are None.
        params: Final parameters by name (float64, as ``named_parameters``).
        final_grad_norm: Norm of the full-batch (or exact) training-loss gradient at the
            final parameters, without any penalty; None when diverged. With ``final_loss``
            it tells a spurious minimum (gradient vanished) from a run still moving.
        kind: How the run ended (:data:`synaprune.bench.kinds.KINDS`); None when not
            classified.
        min_eig: Smallest Hessian eigenvalue at the final parameters; None if not computed.
        saddle_index: Negative Hessian eigenvalues found; None if not computed.
        cost: Cost of the run in gradient-equivalents (one full-batch gradient = 1); None
            when not counted.
        tail_start: Training loss at step ``method.settled_from(budget)`` (``budget // 2``, or
            where the method's noise schedule ends if later; None if the run stopped before).
        tail_rise: Sum over the steps t after that step of max(0, L_t - L_{t-1}): how much
            the loss went up in the second half of the budget, at every step (not the
            downsampled curve); with ``tail_start`` it tells an unstable run
            (:func:`synaprune.bench.kinds.is_unstable`). Not stored.
    """

    seed: int
    status: str
    success: bool
    final_loss: float
    best_loss: float
    steps: int
    steps_to_success: int | None
    wall_time: float
    curve: list[list[float | None]] = field(repr=False)
    params: dict[str, Tensor] = field(repr=False)
    final_grad_norm: float | None = None
    kind: str | None = None
    min_eig: float | None = None
    saddle_index: int | None = None
    cost: float | None = None
    tail_start: float | None = None
    tail_rise: float = 0.0


class MinibatchSampler:
    """Minibatch indices of one run, from a generator seeded with the run's seed only.

    Each epoch is a fresh permutation of the N examples cut into ``N // batch_size`` batches
    (the last partial batch is dropped), so every batch has exactly ``batch_size`` indices and
    seed s's batches do not depend on which other seeds run alongside.

    Args:
        n: Number of training examples N.
        batch_size: Examples per batch, 1 <= batch_size <= N.
        seed: The run's seed.

    Raises:
        ValueError: If ``batch_size`` is not in [1, N].
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if not 1 <= batch_size <= n:
            raise ValueError(f"Invalid batch_size: {batch_size}; must be in [1, {n}] "
                             "(the number of training examples)")
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._perm = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def next(self) -> Tensor:
        """Indices of the next batch, int64 tensor of size [batch_size]."""
        if self._pos + self.batch_size > self._perm.numel():
            self._perm = torch.randperm(self.n, generator=self.generator)
            self._pos = 0
        out = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return out


def check_compatible(problem: Problem, method: Method) -> None:
    """Raise ValueError if ``method`` cannot train ``problem``.

    Minibatches, per-example statistics and mechanism C need a problem with per-example losses;
    mechanism C also needs hidden modules to penalise (see
    :func:`synaprune.bench.penalty.hidden_module_names`).

    Args:
        problem: The problem.
        method: The method.

    Raises:
        ValueError: One line saying why.
    """
    if problem.per_example:
        data = problem.data("train")
        assert data is not None
        n = data[0].shape[0]
        if method.batch_size is not None and method.batch_size > n:
            raise ValueError(f"Method '{method.name}' has batch_size={method.batch_size} but "
                             f"problem '{problem.spec}' has only {n} training examples")
        if method.penalty is not None:
            model = problem.build_model(0)
            if not hidden_module_names(problem, model):
                raise ValueError(f"Method '{method.name}' penalises hidden activations, but "
                                 f"problem '{problem.spec}' builds {type(model).__name__} "
                                 "without activation modules (name them in hidden_modules)")
        return
    if method.batch_size is not None:
        raise ValueError(f"Method '{method.name}' uses minibatches but problem "
                         f"'{problem.spec}' has an exact loss without data")
    if method.per_example_stats:
        raise ValueError(f"Method '{method.name}' needs per-example gradients but problem "
                         f"'{problem.spec}' has an exact loss without per-example terms")
    if method.penalty is not None:
        raise ValueError(f"Method '{method.name}' penalises hidden activations but problem "
                         f"'{problem.spec}' has an exact loss without data")


def curve_steps(budget: int, points: int = 100) -> set[int]:
    """Steps at which the loss curve is recorded: about ``points`` evenly spaced in [0, budget].

    Args:
        budget: Maximum number of steps.
        points: Number of points (at least 2).

    Returns:
        A set of step indices, always holding 0 and ``budget``.
    """
    points = max(points, 2)
    return {round(i * budget / (points - 1)) for i in range(points)}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _grad_norm(grads: Sequence[Tensor]) -> float:
    return float(sum(g.square().sum() for g in grads).sqrt())  # type: ignore[union-attr]


def run_single(
    problem: Problem,
    method: Method,
    seed: int,
    steps: int,
    *,
    curve_points: int = 100,
    until_converged: bool = False,
    grad_tol: float | None = None,
    classify: bool = True,
) -> RunResult:
    """Train one seed in an ordinary loop on ``problem.build_model(seed)``.

    The reference that :func:`run_seeds` must reproduce, and the baseline of the seed-batching
    benchmark. Per-example statistics (``synaprune-a``) come from
    :class:`synaprune.PerExampleGradStats` hooks, mechanism C from
    :class:`synaprune.ActivationGradientPenalty`; the optimizer's noise generator is
    :func:`noise_generator` (seed).

    Args:
        problem: The problem.
        method: The method; ``method.make_optimizer(model.parameters(), generator)`` is
            stepped (with a closure if ``method.needs_closure`` or ``method.loss_closure``).
        seed: Model seed (also the minibatch seed).
        steps: Budget of optimizer steps (>= 0).
        curve_points: Points of the downsampled curve.
        until_converged, grad_tol, classify: As for :func:`run_seeds`.

    Returns:
        The run's :class:`RunResult`.

    Raises:
        ValueError: If the method cannot train the problem (see :func:`check_compatible`).
    """
    check_compatible(problem, method)
    if isinstance(method, GDRestarts):  # R runs of method.base (bench._restarts)
        from synaprune.bench._restarts import run_restarts_single

        return run_restarts_single(run_single, problem, method, seed, steps,
                                   curve_points=curve_points, until_converged=until_converged,
                                   grad_tol=grad_tol, classify=classify)
    method = method.for_budget(steps)
    start = time.perf_counter()
    cost, base_cost = 0.0, step_cost(method, problem)
    tail_start: float | None = None
    tail_rise, previous = 0.0, math.nan
    settled = method.settled_from(steps)  # the window of the "unstable" kind
    bound = math.inf  # divergence_bound of L_0, set at t = 0
    model = problem.build_model(seed)
    opt = method.make_optimizer(model.parameters(), noise_generator(seed))
    probe = PerExampleGradStats(model, reduction="mean") if method.per_example_stats else None
    penalty = (ActivationGradientPenalty(
        model, beta=method.penalty[0], gamma=method.penalty[1],
        layers=[model.get_submodule(n) for n in hidden_module_names(problem, model)])
        if method.penalty is not None else None)
    sampler = None
    if method.batch_size is not None:
        x_all, y_all = problem.data("train")  # type: ignore[misc]
        sampler = MinibatchSampler(x_all.shape[0], method.batch_size, seed)
    record = curve_steps(steps, curve_points)
    curve: list[list[float | None]] = []
    best = math.inf
    status, t, loss_value = "budget", 0, math.nan
    final_grad_norm: float | None = None
    for t in range(steps + 1):
        opt.zero_grad()
        if sampler is None:
            loss = problem.loss(model)
        else:
            with torch.no_grad():
                if probe is not None:
                    with probe.paused():
                        loss = problem.loss(model)
                else:
                    loss = problem.loss(model)
        loss_value = loss.item()
        if t == 0:
            bound = divergence_bound(problem, loss_value)
        best = min(best, loss_value) if math.isfinite(loss_value) else best
        if t == settled:
            tail_start = _finite_or_none(loss_value)
        elif t > settled and math.isfinite(loss_value):
            tail_rise += max(loss_value - previous, 0.0)
        previous = loss_value
        point: list[float | None] = [t, _finite_or_none(loss_value), None]
        if not math.isfinite(loss_value) or loss_value > bound:
            status = "diverged"
        elif problem.solved(loss_value):
            status = "ok"
        elif t == steps:
            status = "budget"
        else:
            status = ""
        if status:
            if status != "diverged":
                final_grad_norm = _final_grad_norm(problem, model, probe)
            point[2] = final_grad_norm
            curve.append(point)
            break
        if sampler is not None:
            idx = sampler.next()
            loss = problem.loss(model, x_all[idx], y_all[idx])
        if penalty is not None:
            loss = penalty(loss)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if until_converged:
            norm_t = (_grad_norm(grads) if sampler is None and penalty is None
                      else _final_grad_norm(problem, model, probe))
            theta_t = math.sqrt(sum(float(p.detach().square().sum())
                                    for p in model.parameters()))
            if norm_t is not None and norm_t <= gradient_threshold(
                    problem, loss_value, theta_t, grad_tol):
                status = "budget"
                final_grad_norm = _final_grad_norm(problem, model, probe)
                point[2] = final_grad_norm
                curve.append(point)
                break
        if t in record:
            point[2] = _finite_or_none(_grad_norm(grads))
            curve.append(point)
        if method.loss_closure:

            def loss_closure(batch: Tensor | None = None if sampler is None else idx) -> Tensor:
                # The optimizer differentiates the loss itself: its graph, no backward.
                return (problem.loss(model) if batch is None
                        else problem.loss(model, x_all[batch], y_all[batch]))

            opt.step(loss_closure)
        elif method.needs_closure:

            def closure(batch: Tensor | None = None if sampler is None else idx) -> Tensor:
                opt.zero_grad()
                again = (problem.loss(model) if batch is None
                         else problem.loss(model, x_all[batch], y_all[batch]))
                again.backward()
                return again.detach()

            opt.step(closure)
        elif method.guard_loss:

            def guard(batch: Tensor | None = None if sampler is None else idx) -> Tensor:
                with contextlib.ExitStack() as stack:
                    if probe is not None:  # a forward pass the statistics must not see
                        stack.enter_context(probe.paused())
                    return (problem.loss(model) if batch is None
                            else problem.loss(model, x_all[batch], y_all[batch]))

            opt.step(guard=guard)
        else:
            opt.step()
        cost += base_cost + float(_hvps_cost(opt))
    if probe is not None:
        probe.remove()
    if penalty is not None:
        penalty.remove()
    result = RunResult(
        seed=seed, status=status, success=status == "ok", final_loss=loss_value,
        best_loss=best, steps=t, steps_to_success=t if status == "ok" else None,
        wall_time=time.perf_counter() - start, curve=curve,
        params={k: v.detach().clone() for k, v in model.named_parameters()},
        final_grad_norm=final_grad_norm, cost=cost, tail_start=tail_start,
        tail_rise=tail_rise,
    )
    if classify:
        classify_results(problem, [result], grad_tol)
    return result


def _final_grad_norm(problem: Problem, model: torch.nn.Module,
                     probe: PerExampleGradStats | None) -> float | None:
    """Norm of the full-batch training-loss gradient at the model's parameters (no penalty)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if probe is not None:
        with probe.paused():
            loss = problem.loss(model)
    else:
        loss = problem.loss(model)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return _finite_or_none(_grad_norm([g for g in grads if g is not None]))


def _per_example_sumsq(
    problem: Problem,
    base: torch.nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    batched_data: bool,
) -> dict[str, Tensor]:
    """sum_i g_i**2 per seed, size [S, ...] per parameter, per-example-loss convention
    (:func:`synaprune.probes.per_example_sums`: the closed form for MLPs, vmap otherwise).

    ``x``/``y`` are [B, ...] shared by all seeds, or [S, B, ...] when ``batched_data``.
    """
    n_seeds = next(iter(params.values())).shape[0]
    sumsq, _ = per_example_sums(base, params, x, y, problem.per_example_loss_fn,
                                buffers=buffers, num_models=n_seeds, batched_data=batched_data)
    return sumsq


def _hvps_cost(opt: torch.optim.Optimizer) -> Tensor | float:
    """Cost of the Hessian-vector products of the step just taken, per model: saddle-free
    Newton's ``krylov_dims`` (one product per Krylov vector) times :data:`cost.HVP`."""
    dims = getattr(opt, "krylov_dims", None)
    return 0.0 if dims is None else HVP * dims.to(torch.float64)


def _fill_missing_grads(params: dict[str, Tensor]) -> None:
    """Give a parameter that the loss does not use a zero gradient."""
    for v in params.values():
        if v.grad is None:
            v.grad = torch.zeros_like(v)


def _per_seed_norms(tensors: Iterable[Tensor]) -> Tensor:
    """Per-seed Euclidean norms over stacked [S, ...] tensors, [S] (float64)."""
    return sum(v.reshape(v.shape[0], -1).square().sum(1)  # type: ignore[return-value]
               for v in tensors).sqrt()


def run_seeds(
    problem: Problem,
    method: Method,
    seeds: Sequence[int],
    steps: int,
    *,
    curve_points: int = 100,
    on_step: Callable[[int, int], None] | None = None,
    until_converged: bool = False,
    grad_tol: float | None = None,
    classify: bool = True,
) -> list[RunResult]:
    """Train the given seeds of one (problem, method) together, vectorised over seeds.

    Seed s gets the same result (to rounding, ~1e-12 in float64) whatever the other seeds are,
    and the same as :func:`run_single`.

    Args:
        problem: The problem.
        method: The method; ONE ``method.make_optimizer`` steps the stacked [S, ...] tensors.
        seeds: Model seeds, S >= 1 of them (distinct).
        steps: Budget of optimizer steps per seed (>= 0).
        curve_points: Points of each downsampled curve.
        on_step: Called after each step as ``on_step(t, n_active)`` (e.g. a progress bar).
        until_converged: Also stop a run (status ``"budget"``, ``steps`` < budget) once its
            full-batch gradient norm at theta_t is small
            (:func:`synaprune.bench.kinds.gradient_threshold` with ``grad_tol``): it leaves
            the batch; up to that step it is bit-identical to the run without the rule.
        grad_tol: Absolute gradient tolerance of the stopping rule and the classification;
            None for the relative default (:data:`synaprune.bench.kinds.REL_GRAD_TOL`).
        classify: Set each result's ``kind`` (and ``min_eig``, ``saddle_index`` where the
            gradient is small) after training, :func:`synaprune.bench.kinds.classify_results`.

    Returns:
        One :class:`RunResult` per seed, in the order of ``seeds``, with ``cost`` in
        gradient-equivalents (:func:`synaprune.bench.cost.step_cost` per step taken).

    Raises:
        ValueError: If the method cannot train the problem, ``seeds`` is empty or has
            duplicates, or ``steps < 0``.
    """
    check_compatible(problem, method)
    method = method.for_budget(steps)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("Invalid seeds: need at least one")
    if len(set(seeds)) != len(seeds):
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        raise ValueError(f"Invalid seeds: no duplicates allowed, got {repeated} more than once")
    if steps < 0:
        raise ValueError(f"Invalid steps: {steps}; must be >= 0")
    if isinstance(method, GDRestarts):  # the S x R runs of method.base (bench._restarts)
        from synaprune.bench._restarts import run_restarts_batched

        return run_restarts_batched(run_seeds, problem, method, seeds, steps,
                                    curve_points=curve_points, on_step=on_step,
                                    until_converged=until_converged, grad_tol=grad_tol,
                                    classify=classify)
    start = time.perf_counter()
    n = len(seeds)
    models = [problem.build_model(s) for s in seeds]
    names = [k for k, _ in models[0].named_parameters()]
    params, buffers = stack_module_state(models)
    params = {k: params[k] for k in names}
    base = copy.deepcopy(models[0]).to("meta")
    del models
    opt = method.make_optimizer(list(params.values()), [noise_generator(s) for s in seeds])
    penalty = (StackedPenalty(problem, base, params, beta=method.penalty[0],
                              gamma=method.penalty[1]) if method.penalty is not None else None)

    def batch_loss(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return problem.functional_loss(base, p, b, x, y)

    v_batch = vmap(batch_loss)

    def full_losses(p: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
        """The seeds' full-batch (or exact) training losses, [S]."""
        return problem.stacked_loss(base, p, b)

    def grad_norms(p: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
        """Norms of the seeds' full-batch training-loss gradients (no penalty), [S]: the
        gradient of the sum over seeds is each seed's own gradient."""
        return _per_seed_norms(grad(lambda q: full_losses(q, b).sum())(p).values())

    samplers: list[MinibatchSampler] = []
    if problem.per_example:
        x_all, y_all = problem.data("train")  # type: ignore[misc]
    if method.batch_size is not None:
        samplers = [MinibatchSampler(x_all.shape[0], method.batch_size, s) for s in seeds]

    record = curve_steps(steps, curve_points)
    curves: list[list[list[float | None]]] = [[] for _ in seeds]
    results: list[RunResult | None] = [None] * n
    # The slots: position j of every stacked tensor (and of the per-seed tensors below) holds
    # seed seeds[live[j]]. A run that stops leaves the batch (select_models), so each step
    # computes the runs still going and nothing else.
    live = list(range(n))
    best = torch.full((n,), math.inf, dtype=torch.float64)
    cost = torch.zeros(n, dtype=torch.float64)
    base_cost = step_cost(method, problem)
    half = method.settled_from(steps)  # the window of the "unstable" kind
    tail_start = torch.full((n,), math.nan, dtype=torch.float64)
    tail_rise = torch.zeros(n, dtype=torch.float64)
    previous = torch.zeros(n, dtype=torch.float64)
    bound = torch.full((n,), math.inf, dtype=torch.float64)  # divergence_bound of L_0

    def finish(stop: Tensor, t: int, full_list: list[float]) -> None:
        """Record the results of the seeds at the positions in ``stop`` (a mask), at theta_t."""
        stop_pos = stop.nonzero().flatten().tolist()
        finals = {k: v.detach()[stop] for k, v in params.items()}
        final_norms = grad_norms(finals, {k: v[stop] for k, v in buffers.items()}).tolist()
        for j, pos in enumerate(stop_pos):
            i, loss_i = live[pos], full_list[pos]
            status = ("diverged" if not math.isfinite(loss_i) or loss_i > bound[pos]
                      else "ok" if problem.solved(loss_i) else "budget")
            final_norm = _finite_or_none(final_norms[j]) if status != "diverged" else None
            curves[i].append([t, _finite_or_none(loss_i), final_norm])
            results[i] = RunResult(
                seed=seeds[i], status=status, success=status == "ok", final_loss=loss_i,
                best_loss=float(best[pos]), steps=t,
                steps_to_success=t if status == "ok" else None, wall_time=0.0,
                curve=curves[i], params={k: v[j].clone() for k, v in finals.items()},
                final_grad_norm=final_norm, cost=float(cost[pos]),
                tail_start=None if t < half else _finite_or_none(float(tail_start[pos])),
                tail_rise=float(tail_rise[pos]),
            )

    for t in range(steps + 1):
        if samplers or penalty is not None:
            with torch.no_grad():
                full = full_losses(params, buffers)
        else:
            losses = full_losses(params, buffers)
            full = losses.detach()
        if t == 0:
            bound = divergence_bound(problem, full.to(torch.float64))
        going = torch.isfinite(full) & ~(full > bound)  # not diverged
        best = torch.fmin(best, torch.where(torch.isfinite(full), full, math.inf))
        if t == half:
            tail_start = full.clone()
        elif t > half:
            tail_rise += torch.where(going, (full - previous).clamp(min=0.0), 0.0)
        previous = full
        solved = going & (full <= problem.global_loss + problem.tolerance)
        stop = ~going | solved if t < steps else torch.ones_like(going)
        full_list = full.tolist()
        if stop.any():
            finish(stop, t, full_list)
            if bool(stop.all()):
                break
        go = ~stop  # the seeds that take this step
        if samplers:
            idx = torch.stack([s.next() for s in samplers])
            if penalty is None:
                losses = v_batch(params, buffers, x_all[idx], y_all[idx])
        opt.zero_grad()
        if penalty is None:
            torch.where(go, losses, 0.0).sum().backward()
        else:
            total, extra = penalty.gradients(
                params, buffers, *((x_all[idx], y_all[idx]) if samplers else (x_all, y_all)),
                go, batched_data=bool(samplers))
            for k, v in params.items():
                v.grad = total[k]
        if until_converged:
            with torch.no_grad():
                if samplers or penalty is not None:
                    norms_t = grad_norms({k: v.detach() for k, v in params.items()}, buffers)
                else:  # .grad is the full-batch gradient of each seed's loss
                    norms_t = _per_seed_norms(v.grad for v in params.values()
                                              if v.grad is not None)
                theta_t = _per_seed_norms(v.detach() for v in params.values())
                converged = go & (norms_t <= gradient_threshold(problem, full, theta_t,
                                                                grad_tol))
            if converged.any():
                finish(converged, t, full_list)
                go = go & ~converged
                if not bool(go.any()):
                    break
        if not bool(go.all()):  # free the slots of the runs that stopped
            keep = go.nonzero().flatten()
            params = dict(zip(params, select_models(opt, keep), strict=True))
            buffers = {k: v[keep] for k, v in buffers.items()}
            if penalty is not None:
                penalty.select(keep)
                extra = {k: v[keep] for k, v in extra.items()}
            best, cost, previous = best[keep], cost[keep], previous[keep]
            tail_start, tail_rise, bound = tail_start[keep], tail_rise[keep], bound[keep]
            kept = keep.tolist()
            live = [live[j] for j in kept]
            full_list = [full_list[j] for j in kept]
            if samplers:
                samplers = [samplers[j] for j in kept]
                idx = idx[keep]
        with torch.no_grad():
            _fill_missing_grads(params)
            sumsq: dict[str, Tensor] | None = None
            batch = 0
            if method.per_example_stats:
                if samplers:
                    sumsq = _per_example_sumsq(problem, base, params, buffers, x_all[idx],
                                               y_all[idx], batched_data=True)
                    batch = method.batch_size
                else:
                    sumsq = _per_example_sumsq(problem, base, params, buffers, x_all, y_all,
                                               batched_data=False)
                    batch = x_all.shape[0]
            if sumsq is not None or penalty is not None:
                # Written once .grad is final, so that they are bound to it.
                for k, v in params.items():
                    fields.write(v, sumsq=None if sumsq is None else sumsq[k],
                                 batch_size=batch, reduction="mean",
                                 extra=None if penalty is None else extra[k])
            if t in record:
                norms = _per_seed_norms(v.grad for v in params.values()).tolist()
                for j, i in enumerate(live):
                    curves[i].append([t, _finite_or_none(full_list[j]),
                                      _finite_or_none(norms[j])])

        def losses_now(batch: Tensor | None = idx if samplers else None,
                       p: dict[str, Tensor] = params, b: dict[str, Tensor] = buffers) -> Tensor:
            """The seeds' losses [S] at the current parameters, on this step's batch."""
            return (full_losses(p, b) if batch is None
                    else v_batch(p, b, x_all[batch], y_all[batch]))

        if method.loss_closure:
            # The sum over the seeds, graph kept, no backward: its Hessian is block diagonal,
            # one block per seed.
            opt.step(lambda: losses_now().sum())
        elif method.needs_closure:

            def closure(p: dict[str, Tensor] = params) -> Tensor:
                opt.zero_grad()
                again = losses_now()
                again.sum().backward()
                with torch.no_grad():
                    _fill_missing_grads(p)
                return again.detach()

            opt.step(closure)
        elif method.guard_loss:
            opt.step(guard=losses_now)  # one loss per seed: each kick judged on its own
        else:
            opt.step()
        cost += torch.as_tensor(base_cost + _hvps_cost(opt), dtype=torch.float64)
        if on_step is not None:
            on_step(t, len(live))
    elapsed = (time.perf_counter() - start) / n
    out: list[RunResult] = []
    for r in results:
        assert r is not None
        r.wall_time = elapsed
        out.append(r)
    if classify:  # after training, once per run: never on the training path
        classify_results(problem, out, grad_tol)
    return out
