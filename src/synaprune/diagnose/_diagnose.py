"""Diagnose a point of parameter space: which kind of point is it, and what is wrong?

See DESIGN.md ("Diagnostics") and seeds 002 (sections 4-5) and 004 (section 8.2). Every
threshold below is a module-level constant with the reason for its value; all are relative to a
scale (loss, parameter norm, largest eigenvalue, the layer's fan-in) except where noted.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import vmap

from synaprune.curvature import (
    ConvergenceWarning,
    HessianOperator,
    gradient_curvature,
    lanczos,
)
from synaprune.diagnose._measured import (
    RunSettings,
    check_problem,
    measured,
    measured_summary,
    run_settings,
)
from synaprune.diagnose._report import Diagnosis, Finding, LayerReport
from synaprune.optim import cancellation as coordinate_cancellation
from synaprune.probes import _fields as fields
from synaprune.probes import per_example_sums, probes_paused

# ---------------------------------------------------------------------------------- thresholds
# Global minimum: the loss is at its known floor (``loss_floor``, 0 for MSE and cross-entropy)
# to rounding, relative to the loss's own scale S, the loss of the null prediction
# loss_fn(0, y) (mean(y^2) for MSE, log C for cross-entropy): L - floor <= (GLOBAL_ULPS * eps)^2
# * S, eps the parameters' machine epsilon. Rounding leaves residuals of a few ulps of the
# targets, amplified by the conditioning of the fit; 1000 ulps allows a condition number of
# 1000 (float64: L - floor <= 4.9e-26 S; float32: 1.4e-8 S). The same quantity floors the
# loss used as a scale below, so no absolute floor makes small-scale targets look solved.
GLOBAL_ULPS = 1e3
# Critical point test (the book's negative test): the relative gradient
# ||g|| * max(||theta||, 1) / L is the log-log slope of the loss along the gradient, "how many
# percent the loss changes per percent of parameter change". Below 1e-3 a 1 % move of the
# parameters changes the loss by under 0.001 %: the gradient is small *for this loss and scale*.
CRITICAL_REL_GRAD = 1e-3
# Ill-conditioned valley: the gradient is not small, yet the best step along it (to second order,
# (g^T g)^2 / (2 g^T H g)) lowers the loss by less than 0.1 % of itself, because g lies along
# steep walls (g^T H g large against g^T g). Gradient descent then needs > 1000 steps per halving.
VALLEY_DECREASE = 1e-3
# Negative-curvature tolerance: an eigenvalue counts as negative when below -NEG_EIG_TOL times
# the largest |eigenvalue|. Lanczos resolves eigenvalues to ~1e-6 relative in float64; a point
# that is only approximately critical (||g|| > 0) carries Hessian noise of that order; and a
# negative curvature 1000 times weaker than the strongest one is, for any stable step size, a flat
# direction. So a local minimum is: every extreme eigenvalue >= -1e-3 * max|eig|.
NEG_EIG_TOL = 1e-3
# Plateau: at a critical point whose curvature is negligible on the loss's own scale,
# max|eig| * max(||theta||, 1)^2 / L < 1e-2 (a move the size of the parameters changes the loss
# by under 1 % to second order): no direction, up or down, is informative.
PLATEAU_CURVATURE = 1e-2
# Per-coordinate cancellation c = |gbar| / r: below 0.1 the per-example gradients of that
# coordinate mostly cancel (their mean is under a tenth of their rms).
CANCELLED_C = 0.1
# Whole-gradient cancellation ||gbar|| / sqrt(mean_i ||g_i||^2) below 0.1: the batch gradient is
# under a tenth of a typical example's gradient (seed 000's cause of stalling).
CANCELLATION_HIGH = 0.1
# Gradient flow: the error signal reaching the first layer against the one reaching the last
# (root mean square per example and unit). Three orders of magnitude either way means the early
# layers learn 1000 times slower (or faster) than the last one at any learning rate.
VANISHING_RATIO = 1e-3
EXPLODING_RATIO = 1e3
# Dead units: a ReLU layer with at least a quarter of its units at zero on every example (some
# dead units are common in trained ReLU nets; a quarter is a lost quarter of the layer).
DEAD_SHARE = 0.25
# Tiny weights: the layer gain rms(W) * sqrt(fan_in) below 0.05, ten times under PyTorch's
# default initialisation (1/sqrt(3) = 0.58) and 28 times under He's sqrt(2): activations and
# gradients through the layer shrink by that factor (seed 002, "weight values close to zero").
TINY_GAIN = 0.05
# Spectral radius far from 1 (seed 004, 8.2.5): repeated multiplication by W scales components by
# its eigenvalues; a factor 10 either way per layer explodes or vanishes within a few layers.
SPECTRAL_FAR = 10.0
# Unscaled inputs: features whose mean or standard deviation exceeds 10 in absolute value, or
# whose standard deviations differ by more than 1000 between features, or inputs whose overall
# rms is under 1e-2 (seed 002, "the input x is zero"). Standardised inputs have mean 0, std 1.
INPUT_SCALE_MAX = 10.0
INPUT_SPREAD_MAX = 1e3
INPUT_SCALE_MIN = 1e-2
# History trend: the gradient norm "did not shrink" when its last value is at least half its
# first (the book's negative test, Goodfellow et al. 2016, 8.2.3).
HISTORY_SHRINK = 0.5
# Minimum at infinity (a stall toward an asymptote, e.g. saturating sigmoids on xor): over the
# history the gradient shrank (ratio < HISTORY_SHRINK) while the parameter norm grew by at least
# PARAM_GROWTH (and, when more than two norms are known, still grew over the last half), and
# over the last half the loss fell by less than LOSS_STALL of its distance to the floor. A run
# converging to the floor (loss halving, or faster) fails the last test.
PARAM_GROWTH = 2.0
LOSS_STALL = 0.1
# Saturated sigmoid/tanh units (seed 002, "activation derivatives near zero"): an (example,
# unit) entry whose derivative is below SATURATED_DERIV of the activation's largest derivative
# (0.25 for sigmoid, 1 for tanh; |z| > 6.0 for sigmoid, > 3.0 for tanh) passes under 1 % of the
# error signal. A layer is flagged when at least SATURATED_SHARE of its entries are saturated
# (as for dead ReLUs: a quarter is a lost quarter of the layer's signal).
SATURATED_DERIV = 1e-2
SATURATED_SHARE = 0.25
# Cliffs (seed 004, 8.2.4): a recorded step whose gradient norm is at least CLIFF_GRAD times
# the history's median gradient norm and after which the loss's distance to the floor grows by
# more than CLIFF_RISE of itself (more than doubles): the step was catapulted off a cliff.
CLIFF_GRAD = 10.0
CLIFF_RISE = 1.0
# Seconds before the progress bar appears: a diagnosis that is over by then prints nothing.
PROGRESS_DELAY = 2.0

LossFn = Callable[[Tensor, Tensor], Tensor]
_RELU_TYPES = (nn.ReLU,)
# Saturating activations: module type -> (name, derivative at the output h as a fraction of the
# activation's largest derivative).
_SATURATING: dict[type[nn.Module], tuple[str, Callable[[Tensor], Tensor]]] = {
    nn.Sigmoid: ("sigmoid", lambda h: 4 * h * (1 - h)),
    nn.Tanh: ("tanh", lambda h: 1 - h * h),
}


def _concat_batches(data: Any) -> tuple[Tensor, Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        return data[0], data[1]
    try:
        batches = list(data)
    except TypeError:
        raise ValueError("data must be an (x, y) pair of tensors or an iterable of (x, y) "
                         f"batches, got {type(data).__name__}") from None
    if not batches:
        raise ValueError("data holds no batches")
    xs, ys = zip(*batches, strict=True)
    return torch.cat(list(xs)), torch.cat(list(ys))


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), Tensor) and m.weight.dim() >= 2
            and m.weight.requires_grad]


def _spectral(weight: Tensor) -> tuple[float, str]:
    w = weight.detach().to(torch.float64).reshape(weight.shape[0], -1)
    if w.shape[0] == w.shape[1]:
        return float(torch.linalg.eigvals(w).abs().max()), "radius"
    return float(torch.linalg.matrix_norm(w, ord=2)), "norm"


def _finite(values: Sequence[Any] | None) -> list[float]:
    out = []
    for v in values or ():
        if v is not None and math.isfinite(float(v)):
            out.append(float(v))
    return out


def _trend(history: Mapping[str, Sequence[float]], floor: float | None) -> dict[str, Any]:
    """First, last, ratio and tail slope of each series; the loss's stall; cliffs.

    ``history`` may hold ``"loss"``, ``"grad_norm"``, ``"param_norm"`` (any number of points,
    e.g. only the first and the last) and ``"step"`` (the step of each loss/grad_norm point,
    for downsampled curves; default 0, 1, 2, ...). None, NaN and inf values are skipped.
    """
    out: dict[str, Any] = {}
    for key in ("grad_norm", "loss", "param_norm"):
        values = _finite(history.get(key))
        if len(values) < 2:
            continue
        first, last = values[0], values[-1]
        out[f"{key}_first"] = first
        out[f"{key}_last"] = last
        if first != 0:
            out[f"{key}_ratio"] = last / first
        mid = values[(len(values) - 1) // 2]
        if len(values) >= 3 and mid != 0:
            out[f"{key}_tail_ratio"] = last / mid
        # least-squares slope of log10(value) per step over the last half
        steps = history.get("step")
        raw = list(history.get(key) or ())
        xs_all = ([float(t) for t in steps] if steps is not None and len(steps) == len(raw)
                  and key != "param_norm" else [float(i) for i in range(len(raw))])
        pairs = [(t, float(v)) for t, v in zip(xs_all, raw, strict=True)
                 if v is not None and math.isfinite(float(v))]
        tail = [(t, v) for t, v in pairs[len(pairs) // 2:] if v > 0]
        if len(tail) >= 2 and key != "param_norm":
            mx = sum(t for t, _ in tail) / len(tail)
            my = sum(math.log10(v) for _, v in tail) / len(tail)
            den = sum((t - mx) ** 2 for t, _ in tail)
            if den > 0:
                out[f"{key}_log10_slope_per_step"] = sum(
                    (t - mx) * (math.log10(v) - my) for t, v in tail) / den
    losses = _finite(history.get("loss"))
    if len(losses) >= 3:
        base = 0.0 if floor is None else floor
        mid = losses[(len(losses) - 1) // 2] - base
        if mid > 0:
            out["loss_tail_drop"] = (losses[(len(losses) - 1) // 2] - losses[-1]) / mid
    out.update(_cliffs(history, floor))
    return out


def _cliffs(history: Mapping[str, Sequence[float]], floor: float | None) -> dict[str, Any]:
    """Recorded steps with a gradient >= CLIFF_GRAD x the median after which the loss's
    distance to the floor more than doubled (seed 004, 8.2.4)."""
    loss, grad = list(history.get("loss") or ()), list(history.get("grad_norm") or ())
    if len(loss) != len(grad) or len(loss) < 3:
        return {}
    steps = list(history.get("step") or range(len(loss)))
    if len(steps) != len(loss):
        steps = list(range(len(loss)))
    finite_grads = sorted(_finite(grad))
    if not finite_grads:
        return {}
    median = finite_grads[len(finite_grads) // 2]
    base = 0.0 if floor is None else floor
    hits = []
    for i in range(len(loss) - 1):
        a, b, g = loss[i], loss[i + 1], grad[i]
        if a is None or b is None or g is None:
            continue
        a, b, g = float(a), float(b), float(g)
        if not (math.isfinite(a) and math.isfinite(g)) or median <= 0:
            continue
        rose = (not math.isfinite(b)) or (b - base > (1 + CLIFF_RISE) * max(a - base, 0.0))
        if g >= CLIFF_GRAD * median and rose and a - base > 0:
            hits.append((g, steps[i], a, b))
    if not hits:
        return {}
    g, _, a, b = max(hits)
    return {"cliff_steps": [int(h[1]) for h in hits], "cliff_grad_norm": g,
            "cliff_loss_before": a, "cliff_loss_after": b if math.isfinite(b) else None,
            "median_grad_norm": median}


def _input_stats(x: Tensor) -> dict[str, float]:
    if not x.dtype.is_floating_point or x.dim() < 2 or x.shape[0] < 2:
        return {}
    flat = x.detach().to(torch.float64).reshape(x.shape[0], -1)
    mean = flat.mean(0)
    std = flat.std(0)
    nonzero = std[std > 0]
    spread = float(nonzero.max() / nonzero.min()) if nonzero.numel() else 1.0
    return {
        "max_abs_mean": float(mean.abs().max()),
        "max_std": float(std.max()),
        "min_std": float(std.min()),
        "std_spread": spread,
        "rms": float(flat.pow(2).mean().sqrt()),
    }


def diagnose(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    history: Mapping[str, Sequence[float]] | None = None,
    k: int = 5,
    lanczos_tol: float | None = None,
    lanczos_maxiter: int | None = None,
    seed: int = 0,
    loss_floor: float | None = 0.0,
    method: Any = None,
    problem: str | None = None,
    progress: bool | None = None,
) -> Diagnosis:
    """Diagnose the model at its current parameters on the given data.

    Computes the loss and gradient, the extreme Hessian eigenvalues (Lanczos on Hessian-vector
    products, k from each end, never the dense Hessian), g^T H g against g^T g, the cancellation
    of per-example gradients (via :class:`synaprune.PerExampleGradStats`), gradient flow and
    weight statistics per layer, dead ReLU units and input scale, then classifies the point and
    raises findings, each with a remedy and a setting to try. The model's parameters, ``.grad``
    and per-example statistics attributes are left as they were; any
    :class:`synaprune.PerExampleGradStats` on the model is paused meanwhile.

    Where each piece comes from: layers are modules owning a ``weight`` of 2+ dimensions
    (Linear, Conv), in the order of ``model.named_modules()``; their error signal is read by
    forward hooks, so modules that are not called (e.g. a ``torch.export`` graph) give nan. Dead
    units are counted on ``nn.ReLU`` modules only (``F.relu`` inside a forward is not seen),
    unit = index along dimension 1 of the output; saturated units likewise on ``nn.Sigmoid`` and
    ``nn.Tanh`` modules. Per-example gradients for the cancellation use ``torch.func.vmap`` over
    examples (each example as a batch of one), in chunks.

    The kinds of point (:data:`KINDS`), in the order they are tested: ``"global minimum"`` (the
    loss is at ``loss_floor`` to rounding, relative to the loss of the null prediction
    ``loss_fn(0, y)``: interpolation, the normal end of over-parameterised training);
    ``"minimum at infinity"`` (needs a history: not a critical point, yet the gradient shrank
    while the parameters grew and the loss stalled above its floor); ``"ill-conditioned
    valley"``, ``"not a critical point"``, ``"plateau"``, ``"saddle"``, ``"local minimum"``.

    Args:
        model: the network, called as ``model(x)``; evaluated in its current mode (call
            ``model.eval()`` first if it has dropout or batch norm).
        loss_fn: ``loss_fn(model(x), y)`` -> the batch's *mean* loss over its B examples (the
            per-example-loss convention of :class:`PerExampleGradStats`, ``reduction="mean"``).
        data: an ``(x, y)`` pair, x of size [N, ...] with examples along dimension 0, or an
            iterable of such batches (concatenated into one; the diagnosis is of the mean loss
            over all N examples). Use float64 for trustworthy curvature.
        history: optional mapping with sequences ``"grad_norm"`` and/or ``"loss"`` over past
            steps (e.g. :meth:`TrainingMonitor.history`), optionally ``"step"`` (the step of
            each point of a downsampled curve) and ``"param_norm"`` (||theta|| at any number of
            points, e.g. only the first and the last); adds the trend, the negative test "the
            gradient norm did not shrink", the minimum at infinity and cliffs (a loss jump
            after a step with a large gradient).
        k: eigenvalues from each end of the spectrum (clipped to n // 2).
        lanczos_tol, lanczos_maxiter: passed to :func:`synaprune.curvature.lanczos`.
        seed: seed of Lanczos' start vector.
        loss_floor: the lowest value the loss can take (0 for MSE and cross-entropy, the
            default); None when unknown (then no point is called a global minimum).
        method: what the run was trained with, so that no remedy recommends what it already
            uses: a lab method spec (``"adam:lr=0.01"``) or :class:`synaprune.bench.Method`, or
            the ``torch.optim.Optimizer`` itself (Adam and relatives, SGD,
            :class:`synaprune.SynaPrune` read from its first parameter group); None: unknown.
        problem: the lab problem this one is like (``"xor"``, ``"spirals"``, ...; a name or
            spec): remedies the lab measured to do significantly worse than gradient descent
            on it are not recommended, and measured remedies say what was measured.
        progress: a progress bar on stderr (tqdm, shown once the diagnosis has taken 2 s);
            None: only when stderr is a terminal; False: never.

    Returns:
        A :class:`Diagnosis`.

    Raises:
        ValueError: malformed data, or a model without parameters that require grad.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from synaprune.diagnose import diagnose
        >>> model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()
        >>> x, y = torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
        >>> from synaprune.diagnose import KINDS
        >>> diagnose(model, nn.functional.mse_loss, (x, y)).kind in KINDS
        True
    """
    x, y = _concat_batches(data)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameters that require grad")
    n = int(sum(p.numel() for p in params))
    num_examples = int(x.shape[0])
    notes: list[str] = []
    if loss_floor is not None and not math.isfinite(float(loss_floor)):
        raise ValueError(f"loss_floor must be a finite number or None, got {loss_floor}")
    settings = run_settings(method)
    check_problem(problem)
    bar = _Progress(progress)
    bar.stage("loss, gradient flow, per-example gradients")

    # Save what the passes below overwrite.
    saved = fields.snapshot(params)
    try:
        with probes_paused():
            first = _first_order(model, loss_fn, x, y, params, notes)
    finally:
        fields.restore(params, saved)

    # Curvature.
    with probes_paused():
        op = HessianOperator(model, loss_fn, (x, y), params=params)
        bar.track(op, "Hessian-vector products (g^T H g, Lanczos)")
        gc = gradient_curvature(op)
        loss = float(op.loss)
        g = op.gradient()
        grad_norm = float(torch.linalg.vector_norm(g))
        param_norm = float(torch.linalg.vector_norm(torch.cat([p.detach().reshape(-1)
                                                               for p in params])))
        # k from each end, and never more than n in all: with 2 * kk == n Lanczos runs until
        # its basis spans the whole space, where its Ritz values are the exact eigenvalues.
        kk = max(1, min(k, n // 2))
        if n >= 2:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                res = lanczos(op, kk, which="both", tol=lanczos_tol, maxiter=lanczos_maxiter,
                              generator=torch.Generator().manual_seed(seed))
            eig = res.eigenvalues.tolist()
            converged = res.converged
            if caught:
                notes.append("Lanczos stopped before meeting its tolerance; eigenvalues are "
                             "approximate")
            smallest, largest = eig[:kk], eig[kk:]
        else:
            # One parameter: the 1 x 1 Hessian is one Hessian-vector product with v = [1].
            val = float(op.matvec(torch.ones(1, dtype=op.dtype))[0])
            smallest, largest, converged = [val], [val], True
    max_abs = max(abs(smallest[0]), abs(largest[-1]))
    neg_cut = -NEG_EIG_TOL * max_abs
    # Counted with multiplicity: lanczos returns a repeated eigenvalue once per copy (and
    # converged=False rather than a spectrum with a copy missing), so each copy is counted.
    num_negative = sum(1 for v in smallest if v < neg_cut)
    lower_bound = num_negative == len(smallest) and len(smallest) < n
    index = num_negative / n

    bar.close()

    # The loss's scale S (the null prediction's loss above the floor) and its distance to the
    # floor; rounding * S stands in for the distance where it is smaller (see GLOBAL_ULPS).
    floor = None if loss_floor is None else float(loss_floor)
    excess = loss - (floor or 0.0)
    reference = first["null_loss"] - (floor or 0.0)
    if not (math.isfinite(reference) and reference > 0):
        reference = abs(excess)
        notes.append("the loss of the null prediction loss_fn(0, y) is not available as the "
                     "loss's scale; the loss itself is used")
    rounding = (GLOBAL_ULPS * torch.finfo(op.dtype).eps) ** 2
    if floor is not None and excess < -rounding * reference:
        notes.append(f"the loss {loss:.6g} is below loss_floor={floor:g}: the floor is wrong, "
                     "so the global-minimum test is skipped")
        floor = None
    at_floor = floor is not None and excess <= rounding * reference
    if at_floor and num_negative:
        # Negative curvature at the floor means the loss goes below it: the floor is not a lower
        # bound of this loss, so the point is judged by its curvature instead.
        notes.append(f"the loss {loss:.6g} is at loss_floor={floor:g} but the Hessian has "
                     f"{num_negative} negative eigenvalue(s): the floor is no lower bound, so "
                     "the global-minimum test is skipped")
        at_floor = False
    loss_scale = max(abs(excess), rounding * reference, torch.finfo(torch.float64).tiny)
    theta_scale = max(param_norm, 1.0)
    relative_grad = grad_norm * theta_scale / loss_scale
    relative_curvature = max_abs * theta_scale**2 / loss_scale
    best = gc.gg**2 / (2 * gc.ghg) if gc.ghg > 0 else math.inf
    relative_best = best / loss_scale
    hist = _trend(history, floor) if history else {}
    stalled = _stall_at_infinity(hist)

    if at_floor:
        kind = "global minimum"
        reason = (f"the loss {loss:.3g} is at its floor {floor:g} to rounding: "
                  f"{excess:.3g} above it, under (GLOBAL_ULPS * eps)^2 = {rounding:.3g} times "
                  f"the loss's scale {reference:.3g} (the loss of the null prediction)")
    elif relative_grad > CRITICAL_REL_GRAD and stalled:
        kind = "minimum at infinity"
        reason = (f"the point is not critical (relative gradient {relative_grad:.3g}), yet over "
                  f"the history the gradient norm shrank to {hist['grad_norm_ratio']:.3g} of "
                  f"its first value while the parameter norm grew "
                  f"{hist['param_norm_ratio']:.3g}-fold, and over the last half the loss fell "
                  f"by only {hist['loss_tail_drop']:.3g} of its distance to the floor: the run "
                  "slides toward an asymptote at infinite parameters")
    elif relative_grad > CRITICAL_REL_GRAD:
        if relative_best < VALLEY_DECREASE:
            kind = "ill-conditioned valley"
            reason = (f"the gradient is not small (relative gradient {relative_grad:.3g} > "
                      f"{CRITICAL_REL_GRAD:g}) but the best step along it lowers the loss by only "
                      f"{relative_best:.3g} of itself (< {VALLEY_DECREASE:g}): g^T H g / g^T g = "
                      f"{gc.curvature:.3g} against a largest eigenvalue {largest[-1]:.3g}")
        else:
            kind = "not a critical point"
            reason = (f"the relative gradient ||g|| max(||theta||,1) / L = {relative_grad:.3g} "
                      f"exceeds {CRITICAL_REL_GRAD:g}")
    elif relative_curvature < PLATEAU_CURVATURE:
        kind = "plateau"
        reason = (f"the gradient is small (relative {relative_grad:.3g}) and so is every extreme "
                  f"eigenvalue (relative curvature {relative_curvature:.3g} < "
                  f"{PLATEAU_CURVATURE:g})")
    elif num_negative > 0:
        kind = "saddle"
        reason = (f"the gradient is small (relative {relative_grad:.3g}) and the Hessian has "
                  f"{num_negative} eigenvalue(s) below -{NEG_EIG_TOL:g} * max|eig| "
                  f"(smallest {smallest[0]:.3g}, largest {largest[-1]:.3g})")
    else:
        kind = "local minimum"
        reason = (f"the gradient is small (relative {relative_grad:.3g}) and every extreme "
                  f"eigenvalue is >= -{NEG_EIG_TOL:g} * max|eig| (smallest {smallest[0]:.3g}, "
                  f"largest {largest[-1]:.3g})")

    diag = Diagnosis(
        kind=kind, reason=reason, loss=loss, grad_norm=grad_norm, param_norm=param_norm,
        relative_grad=relative_grad, ghg=gc.ghg, gg=gc.gg, curvature_along_gradient=gc.curvature,
        best_step_decrease=best, relative_best_decrease=relative_best,
        eigenvalues_smallest=smallest, eigenvalues_largest=largest, eigen_converged=converged,
        relative_curvature=relative_curvature, index=index,
        num_negative=num_negative, index_is_lower_bound=lower_bound,
        num_params=n, num_examples=num_examples, cancellation=first["cancellation"],
        cancelled_share=first["cancelled_share"], history=hist, layers=first["layers"],
        dead_units=first["dead_units"], inputs=_input_stats(x), notes=notes,
        loss_floor=floor, loss_reference=reference, saturated=first["saturated"],
        labels=first["labels"], method=settings.description, problem=problem,
    )
    diag.findings = _findings(diag, settings)
    return diag


def _stall_at_infinity(hist: Mapping[str, Any]) -> bool:
    """The history's minimum at infinity: gradient shrank, parameters grew, loss stalled."""
    if not {"grad_norm_ratio", "param_norm_ratio", "loss_tail_drop"} <= set(hist):
        return False
    still_growing = hist.get("param_norm_tail_ratio", math.inf) > 1.0
    return (hist["grad_norm_ratio"] < HISTORY_SHRINK and hist["param_norm_ratio"] >= PARAM_GROWTH
            and still_growing and hist["loss_tail_drop"] < LOSS_STALL)


class _Progress:
    """Progress on stderr (tqdm): the phase, then a count of Hessian-vector products.

    Shown only once the diagnosis has run for PROGRESS_DELAY (tqdm's ``delay``), so quick ones
    print nothing; off when ``enabled`` is False, or None and stderr is not a terminal.
    """

    def __init__(self, enabled: bool | None) -> None:
        if enabled is None:
            enabled = sys.stderr is not None and sys.stderr.isatty()
        self.bar: Any = None
        self.start = time.monotonic()
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(desc="diagnose", unit=" products", delay=PROGRESS_DELAY,
                            file=sys.stderr, leave=False, dynamic_ncols=True)

    def stage(self, text: str) -> None:
        if self.bar is not None:
            shown = time.monotonic() - self.start >= PROGRESS_DELAY
            self.bar.set_description_str(f"diagnose: {text}", refresh=shown)

    def track(self, op: Any, text: str) -> None:
        """Count ``op``'s products on the bar (wraps the instance's ``matvec``)."""
        if self.bar is None:
            return
        self.stage(text)
        inner = op.matvec

        def matvec(v: Any) -> Any:
            out = inner(v)
            self.bar.update(1)
            return out

        op.matvec = matvec

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _first_order(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor,
                 params: list[Tensor], notes: list[str]) -> dict[str, Any]:
    """One forward and backward pass with hooks: per-layer signals, dead units, cancellation."""
    layers = _layers(model)
    outputs: dict[str, Tensor] = {}
    relu_out: dict[str, Tensor] = {}
    handles = []

    called: list[str] = []  # modules in the order the forward pass called them

    def keep(name: str, store: dict[str, Tensor]) -> Callable[..., None]:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            if isinstance(out, Tensor) and name not in store:
                store[name] = out
                called.append(name)
                if out.requires_grad:
                    out.retain_grad()
        return hook

    for name, m in layers:
        handles.append(m.register_forward_hook(keep(name, outputs)))
    saturating_out: dict[str, Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, _RELU_TYPES):
            handles.append(m.register_forward_hook(keep(name, relu_out)))
        if type(m) in _SATURATING:
            handles.append(m.register_forward_hook(keep(name, saturating_out)))
    try:
        for p in params:
            p.grad = None
        out = model(x)
        loss = loss_fn(out, y)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {list(loss.shape)}")
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    null_loss = _null_loss(loss_fn, out, y)

    batch = int(x.shape[0])
    reports = []
    for name, m in layers:
        w = m.weight
        wn = float(torch.linalg.vector_norm(w.detach()))
        fan_in = w[0].numel()
        gain = float(w.detach().pow(2).mean().sqrt()) * math.sqrt(fan_in)
        gn = float(torch.linalg.vector_norm(w.grad)) if w.grad is not None else 0.0
        out = outputs.get(name)
        if out is not None and out.grad is not None:
            back = float(out.grad.detach().pow(2).mean().sqrt()) * batch
        else:
            back = math.nan
        spec, spec_kind = _spectral(w)
        reports.append(LayerReport(name=name, shape=list(w.shape), weight_norm=wn,
                                   weight_gain=gain, spectral=spec, spectral_kind=spec_kind,
                                   grad_norm=gn, relative_grad=gn / wn if wn > 0 else math.nan,
                                   backward_rms=back))
    dead = {}
    for name, out in relu_out.items():
        if out.dim() >= 2:
            active = (out.detach() > 0).transpose(0, 1).reshape(out.shape[1], -1).any(1)
            dead[name] = float((~active).double().mean())

    saturated = {}
    for name, h in saturating_out.items():
        if h.numel():
            ratio = _SATURATING[type(model.get_submodule(name))][1](h.detach())
            saturated[name] = float((ratio < SATURATED_DERIV).double().mean())
    labels = _labels(model, {**relu_out, **saturating_out}, called)

    canc, share = math.nan, math.nan
    try:
        canc, share = _cancellation(model, loss_fn, x, y, params)
    except Exception as exc:  # torch.func cannot trace every model (e.g. data-dependent flow)
        notes.append(f"cancellation not computed: per-example gradients failed "
                     f"({type(exc).__name__}: {exc})")
    return {"layers": reports, "dead_units": dead, "cancellation": canc,
            "cancelled_share": share, "null_loss": null_loss, "saturated": saturated,
            "labels": labels}


def _null_loss(loss_fn: LossFn, out: Any, y: Tensor) -> float:
    """loss_fn(0, y): the loss of the null prediction (mean(y^2) for MSE, log C for
    cross-entropy), the loss's own scale; nan when it cannot be computed."""
    if not isinstance(out, Tensor):
        return math.nan
    try:
        with torch.no_grad():
            value = loss_fn(torch.zeros_like(out), y)
        return float(value) if isinstance(value, Tensor) and value.numel() == 1 else math.nan
    except Exception:  # any loss_fn: a scale is optional, the diagnosis goes on without it
        return math.nan


def _describe(m: nn.Module) -> str:
    """A module as a person reads it: "Linear 4→8", "Conv2d 1→8 3x3", "ReLU"."""
    kind = type(m).__name__
    if isinstance(m, nn.Linear):
        return f"{kind} {m.in_features}→{m.out_features}"
    if isinstance(m, nn.modules.conv._ConvNd):
        size = "x".join(str(s) for s in m.kernel_size)
        return f"{kind} {m.in_channels}→{m.out_channels} {size}"
    weight = getattr(m, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() >= 2:
        return f"{kind} {'x'.join(str(s) for s in weight.shape)}"
    return kind


def _labels(model: nn.Module, activations: Mapping[str, Tensor],
            called: Sequence[str]) -> dict[str, str]:
    """Readable labels of the layers and activation modules: "0 (Linear 4→8)", "1 (ReLU after
    0, 8 units)"; "after" names the layer the forward pass called last before the activation
    (``called``: the hooked modules in call order). The root module, named "", is "model"."""
    modules = dict(model.named_modules())
    out: dict[str, str] = {}
    for name, m in modules.items():
        if name not in activations and isinstance(getattr(m, "weight", None), Tensor) and (
                m.weight.dim() >= 2):
            out[name] = f"{name or 'model'} ({_describe(m)})"
    previous = ""
    for name in called:
        if name in activations:
            h = activations[name]
            units = (f", {h.shape[1]} unit{'s' if h.shape[1] != 1 else ''}"
                     if h.dim() >= 2 else "")
            after = f" after {previous}" if previous else ""
            out[name] = f"{name or 'model'} ({_describe(modules[name])}{after}{units})"
        else:
            previous = name
    return out


def _cancellation(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor,
                  params: list[Tensor]) -> tuple[float, float]:
    """||gbar|| / sqrt(mean_i ||g_i||^2) and the share of coordinates with c < CANCELLED_C.

    Per-example gradients g_i = grad of loss_fn(model(x_i), y_i) (a batch of one), summed into
    sum_i g_i and sum_i g_i^2 by :func:`synaprune.probes.per_example_sums` (the closed form for
    an MLP, vmap over examples otherwise, in chunks of at most ~2**22 numbers). It calls the
    model functionally, so it is independent of any PerExampleGradStats on the model.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}

    def per_example_loss(out: Tensor, target: Tensor) -> Tensor:
        # l_i: loss_fn on a batch of one, for every row
        return vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(out, target)

    sumsq_by_name, total_by_name = per_example_sums(
        model, dict(zip(names, params, strict=True)), x, y, per_example_loss,
        buffers={**frozen, **dict(model.named_buffers())}, with_sum=True,
        chunk_elements=2**22)
    assert total_by_name is not None
    sumsq = [sumsq_by_name[k] for k in names]
    batch = int(x.shape[0])
    n = sum(v.numel() for v in params)
    gbar = [total_by_name[k] / batch for k in names]
    gbar_sq = float(sum(g.double().pow(2).sum() for g in gbar))
    rms = math.sqrt(float(sum(s2.double().sum() for s2 in sumsq)) / batch)
    canc = math.sqrt(gbar_sq) / rms if rms > 0 else 1.0
    below = sum(int((coordinate_cancellation(g, s2, batch) < CANCELLED_C).sum())
                for g, s2 in zip(gbar, sumsq, strict=True))
    return canc, below / n


_NOISE_SETTING = 'SynaPrune(model.parameters(), lr=..., noise=1e-3, noise_trigger="stall")'
_BLEND_SETTING = 'SynaPrune(model.parameters(), lr=..., aggregation="blend", blend=0.5)'
_RMS_SETTING = 'SynaPrune(model.parameters(), lr=..., aggregation="rms")'
_ADAM_SETTING = 'SynaPrune(model.parameters(), lr=..., base="adam")'
_ESCAPE_SETTING = ('SynaPrune(model.parameters(), lr=..., preset="escape", total_steps=N)  '
                   '# N: the training budget in optimizer steps')
_RESTARTS_SETTING = ("R fresh initialisations, each trained for N / R steps, the best kept "
                     "(the lab's gd-restarts:restarts=R)")
_SFN_SETTING = ("SaddleFreeNewton(model.parameters(), lr=1.0, damping=0.01, krylov_dim=20)  "
                "# step along |H|^-1 g: negative curvature becomes descent")
# A remedy's candidates, in order of preference: (features it switches on, setting, the lab
# method that is that remedy, for the measurements).
Candidate = tuple[tuple[str, ...], str, "str | None"]


def _fmt(value: float, spec: str = ".3g") -> str:
    """A number for a message: "n/a" for nan, "unbounded" for an infinity."""
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "unbounded" if value > 0 else "-unbounded"
    return format(value, spec)


def _finding(d: Diagnosis, settings: RunSettings, code: str, message: str,
             evidence: dict[str, Any], remedy: str, candidates: Sequence[Candidate]) -> Finding:
    """A finding whose setting is the first candidate the run does not already use and the lab
    did not measure to hurt on a problem of this kind; the others are said why not."""
    why_not: list[str] = []
    setting, said = "", ""
    for features, text, lab in candidates:
        used = [f for f in features if settings.uses(f)]
        if used:
            why_not.append(f"the run already uses {settings.said(used[0])}")
            continue
        m = measured(d.problem, lab)
        if m is not None and m.effect == "hurts":
            why_not.append(f"{lab} not recommended: {m.text()}")
            continue
        setting, said = text, (m.text() if m is not None else "")
        break
    if why_not:
        remedy += " (" + "; ".join(dict.fromkeys(why_not)) + ")"
    return Finding(code, message, evidence, remedy, setting, said)


def _findings(d: Diagnosis, settings: RunSettings | None = None) -> list[Finding]:
    settings = RunSettings() if settings is None else settings
    out: list[Finding] = []
    ev_point = {"relative_grad": d.relative_grad, "eigenvalues_smallest": d.eigenvalues_smallest,
                "eigenvalues_largest": d.eigenvalues_largest}
    noise = (("noise",), _NOISE_SETTING, "synaprune-b")
    sfn = (("saddle-free",), _SFN_SETTING, "saddle-free-newton")
    if d.kind == "global minimum":
        out.append(Finding(
            "global-minimum", f"global minimum: the loss {d.loss:.3g} is at its floor "
            f"{d.loss_floor:g} to rounding (relative to its scale {d.loss_reference:.3g})",
            {"loss": d.loss, "loss_floor": d.loss_floor, "loss_reference": d.loss_reference},
            "nothing to escape: interpolation is the normal end of over-parameterised "
            "training; judge the model on held-out data (regularise if it overfits)"))
    elif d.kind == "minimum at infinity":
        summary = measured_summary(d.problem)
        out.append(Finding(
            "minimum-at-infinity", "minimum at infinity: the gradient shrinks while the "
            "parameters grow and the loss stalls above its floor; the run converges to an "
            "asymptote, not to a point (e.g. sigmoid units saturating toward 0 and 1)",
            {k: v for k, v in d.history.items() if k.startswith(("grad_norm", "param_norm",
                                                                 "loss_tail"))},
            "no small step or perturbation leaves it: restart from another initialisation or "
            "at a tuned learning rate; non-saturating activations (ReLU family) or "
            "normalisation; weight decay makes the minimum finite (and changes the objective)"
            + (f"; {summary}" if summary else ""), "", summary))
    elif d.kind == "saddle":
        out.append(_finding(
            d, settings, "saddle", f"saddle point of index {d.index:.3g} ({d.num_negative} "
            f"negative eigenvalue(s) of {d.num_params}): gradient descent lingers near it",
            {**ev_point, "index": d.index, "num_negative": d.num_negative},
            "perturb the parameters when the gradient stalls (perturbed gradient descent, "
            "Jin et al. 2017; SynaPrune mechanism B) or step along negative curvature",
            [noise, sfn]))
    elif d.kind == "plateau":
        out.append(_finding(
            d, settings, "plateau",
            "plateau: gradient and curvature are both negligible on the loss's scale",
            {**ev_point, "relative_curvature": d.relative_curvature},
            "weight noise on a stall (SynaPrune mechanism B) and a per-coordinate aggregation "
            "that does not shrink with the gradient; check initialisation (He/Xavier)",
            [noise, sfn]))
    elif d.kind == "local minimum":
        out.append(_finding(
            d, settings, "local-minimum", f"local minimum at loss {d.loss:.4g}: if that is "
            "above the loss you expect, it is a bad local minimum", ev_point,
            "where the model may change, widen the layer that is stuck (two extra units "
            "removed every spurious minimum of the exact teacher-student study, "
            "docs/results.md); otherwise escape with magnitude-proportional weight noise "
            "that decays to 0 over the budget (SynaPrune's escape preset, mechanism B; "
            "docs/noise-escape.md), or restart from fresh initialisations sharing the budget "
            "and keep the best",
            [(("noise",), _ESCAPE_SETTING, "synaprune-escape"),
             (("noise", "blend"), 'SynaPrune(model.parameters(), lr=..., noise=1e-2, '
              'noise_trigger="stall", aggregation="blend", blend=0.5)', "synaprune-ab"),
             (("restarts",), _RESTARTS_SETTING, "gd-restarts")]))
    elif d.kind == "ill-conditioned valley":
        c = d.curvature_along_gradient
        out.append(_finding(
            d, settings, "ill-conditioned", f"ill-conditioned: a step -eps*g raises the loss "
            f"once eps > {_fmt(2 / c if c > 0 else math.inf)} (2 / curvature along g)",
            {"ghg": d.ghg, "gg": d.gg, "curvature_along_gradient": d.curvature_along_gradient,
             "relative_best_decrease": d.relative_best_decrease},
            "input standardisation and normalisation layers (BatchNorm/LayerNorm) to even out "
            "the curvature; a per-coordinate step size (Adam); a learning rate below 2/curvature",
            [(("adam",), _ADAM_SETTING, "adam")]))
    if settings.name is not None and d.problem is not None:
        m = measured(d.problem, settings.name)
        if m is not None and m.effect == "hurts":
            out.append(Finding(
                "method-measured-worse", f"the run's method {settings.name} is one the lab "
                f"measured to do worse than plain gradient descent here: {m.text()}",
                {"method": settings.name, "successes": m.successes, "seeds": m.seeds,
                 "gd_successes": m.gd_successes, "gd_seeds": m.gd_seeds},
                "gd at the learning rate tuned for the problem (docs/tuning.md)", ""))
    if d.kind != "global minimum" and d.history and (
            d.history.get("grad_norm_ratio", 0.0) >= HISTORY_SHRINK):
        out.append(Finding(
            "gradient-not-shrinking", "the gradient norm did not shrink over the history: "
            "training is not converging to a critical point of any kind",
            {k: v for k, v in d.history.items() if k.startswith("grad_norm")},
            "not a critical-point problem: look at the other flags (step size, gradient flow, "
            "scaling) rather than at escaping minima", ""))
    if d.history.get("cliff_steps"):
        h = d.history
        after = ("NaN or inf" if h["cliff_loss_after"] is None
                 else f"{h['cliff_loss_after']:.3g}")
        steps = h["cliff_steps"]
        where = (f"step {steps[0]}" if len(steps) == 1
                 else f"steps {', '.join(map(str, steps))} (largest shown)")
        out.append(Finding(
            "cliff", f"cliff: after the {where} the loss jumped from "
            f"{h['cliff_loss_before']:.3g} to {after}; the gradient "
            f"there was {h['cliff_grad_norm'] / h['median_grad_norm']:.3g} times the median "
            f"({h['cliff_grad_norm']:.3g} against {h['median_grad_norm']:.3g})",
            {k: v for k, v in h.items() if k.startswith("cliff") or k == "median_grad_norm"},
            "gradient clipping (seed 004, 8.2.4): cap the norm of each step so that a cliff "
            "cannot catapult the parameters",
            f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm="
            f"{h['median_grad_norm']:.3g}) before each step  # the history's median gradient"))
    if (d.kind != "global minimum" and d.cancellation == d.cancellation
            and d.cancellation < CANCELLATION_HIGH):
        out.append(_finding(
            d, settings, "high-cancellation", f"per-example gradients cancel: ||gbar|| is "
            f"{d.cancellation:.3g} of sqrt(mean ||g_i||^2), {100 * d.cancelled_share:.0f}% of "
            f"coordinates have c < {CANCELLED_C:g}",
            {"cancellation": d.cancellation, "cancelled_share": d.cancelled_share},
            "aggregate per-example gradients by their root mean square (SynaPrune mechanism A)",
            [(("blend",), _BLEND_SETTING, "synaprune-a"),
             (("rms",), _RMS_SETTING, "synaprune-a")]))
    label = d.labels.get
    layers = [layer for layer in d.layers if layer.backward_rms == layer.backward_rms]
    if len(layers) >= 2 and layers[-1].backward_rms > 0:
        ratios = {layer.name: layer.backward_rms / layers[-1].backward_rms for layer in layers}
        first = ratios[layers[0].name]
        ev = {"backward_rms_ratio_to_last": ratios,
              "grad_norm": {layer.name: layer.grad_norm for layer in layers}}
        if first < VANISHING_RATIO:
            weak = [label(name, name) for name, r in ratios.items() if r < VANISHING_RATIO]
            out.append(_finding(
                d, settings, "vanishing-gradients", f"vanishing gradient flow: the error "
                f"signal reaching the first layer is {first:.3g} of the last layer's (layers "
                f"{', '.join(weak)})",
                ev, "ReLU-family activations, normalisation (BatchNorm/LayerNorm), skip "
                "connections, He/Xavier initialisation",
                [(("adam",), _ADAM_SETTING + "  # per-coordinate step sizes rescale weak "
                  "layers", "adam")]))
        elif first > EXPLODING_RATIO:
            out.append(Finding(
                "exploding-gradients", f"exploding gradient flow: the error signal reaching "
                f"the first layer is {first:.3g} times the last layer's", ev,
                "gradient clipping and proper (He/Xavier) initialisation",
                "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0) before each step; "
                "keep SynaPrune noise=0 (multiplicative noise compounds)"))
    for name, share in d.dead_units.items():
        if share >= DEAD_SHARE:
            out.append(Finding(
                "dead-units", f"{100 * share:.0f}% of the ReLU units of {label(name, name)} "
                "are inactive on every example (zero derivative: they never learn)",
                {"module": name, "dead_share": share},
                "LeakyReLU or ELU instead of ReLU; He initialisation; smaller learning rate",
                "replace nn.ReLU() by nn.LeakyReLU(0.01)"))
    for name, share in d.saturated.items():
        if share >= SATURATED_SHARE:
            out.append(Finding(
                "saturated-units", f"{100 * share:.0f}% of the (example, unit) outputs of "
                f"{label(name, name)} are saturated: derivative under {SATURATED_DERIV:g} of "
                "its largest, so almost no error signal passes (seed 002, activation "
                "derivatives near zero)",
                {"module": name, "saturated_share": share},
                "ReLU-family activations; normalisation (BatchNorm/LayerNorm) before the "
                "activation; Xavier initialisation; the weights into the layer are too large for "
                "its inputs",
                "replace nn.Sigmoid()/nn.Tanh() by nn.ReLU(), or put nn.LayerNorm before them"))
    tiny = [layer for layer in d.layers if layer.weight_gain < TINY_GAIN]
    if tiny:
        out.append(_finding(
            d, settings, "tiny-weights", "weights close to zero: layer gain rms(W)*sqrt(fan_in) "
            f"under {TINY_GAIN:g} in {', '.join(label(layer.name, layer.name) for layer in tiny)}",
            {layer.name: layer.weight_gain for layer in tiny},
            "proper weight initialisation (He for ReLU, Xavier for tanh/sigmoid)",
            [(("noise_eps",), 'SynaPrune(model.parameters(), lr=..., noise=1e-3, '
              'noise_eps=1e-2, noise_trigger="stall")  # noise_eps moves weights that are ~0',
              None)]))
    far = [layer for layer in d.layers
           if layer.spectral > SPECTRAL_FAR or layer.spectral < 1 / SPECTRAL_FAR]
    if far:
        out.append(Finding(
            "spectral-radius", "weight matrices whose spectral radius (or norm) is far from 1: "
            + ", ".join(f"{label(layer.name, layer.name)} {layer.spectral:.3g}" for layer in far),
            {layer.name: layer.spectral for layer in far},
            "He/Xavier (or orthogonal) initialisation; normalisation layers; gradient clipping "
            "when it is large", ""))
    s = d.inputs
    if s and (s["max_abs_mean"] > INPUT_SCALE_MAX or s["max_std"] > INPUT_SCALE_MAX
              or s["std_spread"] > INPUT_SPREAD_MAX or s["rms"] < INPUT_SCALE_MIN):
        out.append(Finding(
            "unscaled-inputs", f"inputs are not standardised: max |feature mean| "
            f"{s['max_abs_mean']:.3g}, max feature std {s['max_std']:.3g}, std spread "
            f"{s['std_spread']:.3g}, rms {s['rms']:.3g}",
            dict(s), "input standardisation (x - mean) / std per feature; batch normalisation",
            "x = (x - x.mean(0)) / x.std(0)  # with the training set's mean and std"))
    return out
