"""Diagnose a point of parameter space: which kind of point is it, and what is wrong?

See DESIGN.md ("Diagnostics") and seeds 002 (sections 4-5) and 004 (section 8.2). Every
threshold below is a module-level constant with the reason for its value; all are relative to a
scale (loss, parameter norm, largest eigenvalue, the layer's fan-in) except where noted.
"""

from __future__ import annotations

import math
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
from synaprune.diagnose._report import Diagnosis, Finding, LayerReport
from synaprune.optim import cancellation as coordinate_cancellation
from synaprune.probes import _fields as fields
from synaprune.probes import per_example_sums, probes_paused

# ---------------------------------------------------------------------------------- thresholds
# A loss at or below this is treated as zero when used as a scale (avoids dividing by 0 at a
# perfect fit).
LOSS_FLOOR = 1e-12
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

LossFn = Callable[[Tensor, Tensor], Tensor]
_RELU_TYPES = (nn.ReLU,)


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


def _trend(history: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("grad_norm", "loss"):
        values = [float(v) for v in history.get(key, ()) if math.isfinite(float(v))]
        if len(values) < 2:
            continue
        first, last = values[0], values[-1]
        out[f"{key}_first"] = first
        out[f"{key}_last"] = last
        out[f"{key}_ratio"] = last / first if first != 0 else math.nan
        # least-squares slope of log10(value) per step over the last half
        tail = [v for v in values[len(values) // 2:] if v > 0]
        if len(tail) >= 2:
            n = len(tail)
            xs = list(range(n))
            ly = [math.log10(v) for v in tail]
            mx, my = sum(xs) / n, sum(ly) / n
            den = sum((a - mx) ** 2 for a in xs)
            out[f"{key}_log10_slope_per_step"] = (
                sum((a - mx) * (b - my) for a, b in zip(xs, ly, strict=True)) / den)
    return out


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
    unit = index along dimension 1 of the output. Per-example gradients for the cancellation use
    ``torch.func.vmap`` over examples (each example as a batch of one), in chunks.

    Args:
        model: the network, called as ``model(x)``; evaluated in its current mode (call
            ``model.eval()`` first if it has dropout or batch norm).
        loss_fn: ``loss_fn(model(x), y)`` -> the batch's *mean* loss over its B examples (the
            per-example-loss convention of :class:`PerExampleGradStats`, ``reduction="mean"``).
        data: an ``(x, y)`` pair, x of size [N, ...] with examples along dimension 0, or an
            iterable of such batches (concatenated into one; the diagnosis is of the mean loss
            over all N examples). Use float64 for trustworthy curvature.
        history: optional mapping with sequences ``"grad_norm"`` and/or ``"loss"`` over past
            steps (e.g. :meth:`TrainingMonitor.history`); adds the trend and the
            negative test "the gradient norm did not shrink".
        k: eigenvalues from each end of the spectrum (clipped to n // 2).
        lanczos_tol, lanczos_maxiter: passed to :func:`synaprune.curvature.lanczos`.
        seed: seed of Lanczos' start vector.

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
        >>> diagnose(model, nn.functional.mse_loss, (x, y)).kind in ("not a critical point",
        ...     "ill-conditioned valley", "local minimum", "saddle", "plateau")
        True
    """
    x, y = _concat_batches(data)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameters that require grad")
    n = int(sum(p.numel() for p in params))
    num_examples = int(x.shape[0])
    notes: list[str] = []

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

    loss_scale = max(loss, LOSS_FLOOR)
    theta_scale = max(param_norm, 1.0)
    relative_grad = grad_norm * theta_scale / loss_scale
    relative_curvature = max_abs * theta_scale**2 / loss_scale
    best = gc.gg**2 / (2 * gc.ghg) if gc.ghg > 0 else math.inf
    relative_best = best / loss_scale

    if relative_grad > CRITICAL_REL_GRAD:
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

    hist = _trend(history) if history else {}
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
    )
    diag.findings = _findings(diag)
    return diag


def _first_order(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor,
                 params: list[Tensor], notes: list[str]) -> dict[str, Any]:
    """One forward and backward pass with hooks: per-layer signals, dead units, cancellation."""
    layers = _layers(model)
    outputs: dict[str, Tensor] = {}
    relu_out: dict[str, Tensor] = {}
    handles = []

    def keep(name: str, store: dict[str, Tensor]) -> Callable[..., None]:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            if isinstance(out, Tensor) and name not in store:
                store[name] = out
                if out.requires_grad:
                    out.retain_grad()
        return hook

    for name, m in layers:
        handles.append(m.register_forward_hook(keep(name, outputs)))
    for name, m in model.named_modules():
        if isinstance(m, _RELU_TYPES):
            handles.append(m.register_forward_hook(keep(name, relu_out)))
    try:
        for p in params:
            p.grad = None
        loss = loss_fn(model(x), y)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {list(loss.shape)}")
        loss.backward()
    finally:
        for h in handles:
            h.remove()

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

    canc, share = math.nan, math.nan
    try:
        canc, share = _cancellation(model, loss_fn, x, y, params)
    except Exception as exc:  # torch.func cannot trace every model (e.g. data-dependent flow)
        notes.append(f"cancellation not computed: per-example gradients failed "
                     f"({type(exc).__name__}: {exc})")
    return {"layers": reports, "dead_units": dead, "cancellation": canc,
            "cancelled_share": share}


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


def _findings(d: Diagnosis) -> list[Finding]:
    out: list[Finding] = []
    ev_point = {"relative_grad": d.relative_grad, "eigenvalues_smallest": d.eigenvalues_smallest,
                "eigenvalues_largest": d.eigenvalues_largest}
    if d.kind == "saddle":
        out.append(Finding(
            "saddle", f"saddle point of index {d.index:.3g} ({d.num_negative} negative "
            f"eigenvalue(s) of {d.num_params}): gradient descent lingers near it",
            {**ev_point, "index": d.index, "num_negative": d.num_negative},
            "perturb the parameters when the gradient stalls (perturbed gradient descent, "
            "Jin et al. 2017; SynaPrune mechanism B) or step along negative curvature",
            _NOISE_SETTING))
    elif d.kind == "plateau":
        out.append(Finding(
            "plateau", "plateau: gradient and curvature are both negligible on the loss's scale",
            {**ev_point, "relative_curvature": d.relative_curvature},
            "weight noise on a stall (SynaPrune mechanism B) and a per-coordinate aggregation "
            "that does not shrink with the gradient; check initialisation (He/Xavier)",
            _NOISE_SETTING))
    elif d.kind == "local minimum":
        out.append(Finding(
            "local-minimum", f"local minimum at loss {d.loss:.4g}: if that is above the "
            "loss you expect, it is a bad local minimum",
            ev_point,
            "escape with magnitude-proportional weight noise (SynaPrune mechanism B) or "
            "rms/blend aggregation, which keeps moving where per-example gradients cancel",
            'SynaPrune(model.parameters(), lr=..., noise=1e-2, noise_trigger="stall", '
            'aggregation="blend", blend=0.5)'))
    elif d.kind == "ill-conditioned valley":
        out.append(Finding(
            "ill-conditioned", f"ill-conditioned: a step -eps*g raises the loss once eps > "
            f"{2 / d.curvature_along_gradient if d.curvature_along_gradient > 0 else math.inf:.3g}"
            " (2 / curvature along g)",
            {"ghg": d.ghg, "gg": d.gg, "curvature_along_gradient": d.curvature_along_gradient,
             "relative_best_decrease": d.relative_best_decrease},
            "input standardisation and normalisation layers (BatchNorm/LayerNorm) to even out "
            "the curvature; a per-coordinate step size (Adam); a learning rate below 2/curvature",
            'SynaPrune(model.parameters(), lr=..., base="adam")'))
    if d.history and d.history.get("grad_norm_ratio", 0.0) >= HISTORY_SHRINK:
        out.append(Finding(
            "gradient-not-shrinking", "the gradient norm did not shrink over the history: "
            "training is not converging to a critical point of any kind",
            {k: v for k, v in d.history.items() if k.startswith("grad_norm")},
            "not a critical-point problem: look at the other flags (step size, gradient flow, "
            "scaling) rather than at escaping minima", ""))
    if d.cancellation == d.cancellation and d.cancellation < CANCELLATION_HIGH:
        out.append(Finding(
            "high-cancellation", f"per-example gradients cancel: ||gbar|| is "
            f"{d.cancellation:.3g} of sqrt(mean ||g_i||^2), {100 * d.cancelled_share:.0f}% of "
            f"coordinates have c < {CANCELLED_C:g}",
            {"cancellation": d.cancellation, "cancelled_share": d.cancelled_share},
            "aggregate per-example gradients by their root mean square (SynaPrune mechanism A)",
            _BLEND_SETTING))
    layers = [layer for layer in d.layers if layer.backward_rms == layer.backward_rms]
    if len(layers) >= 2 and layers[-1].backward_rms > 0:
        ratios = {layer.name: layer.backward_rms / layers[-1].backward_rms for layer in layers}
        first = ratios[layers[0].name]
        ev = {"backward_rms_ratio_to_last": ratios,
              "grad_norm": {layer.name: layer.grad_norm for layer in layers}}
        if first < VANISHING_RATIO:
            weak = [name for name, r in ratios.items() if r < VANISHING_RATIO]
            out.append(Finding(
                "vanishing-gradients", f"vanishing gradient flow: the error signal reaching "
                f"the first layer is {first:.3g} of the last layer's (layers {', '.join(weak)})",
                ev, "ReLU-family activations, normalisation (BatchNorm/LayerNorm), skip "
                "connections, He/Xavier initialisation", 'SynaPrune(model.parameters(), '
                'lr=..., base="adam")  # per-coordinate step sizes rescale weak layers'))
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
                "dead-units", f"{100 * share:.0f}% of the ReLU units of {name} are inactive on "
                "every example (zero derivative: they never learn)",
                {"module": name, "dead_share": share},
                "LeakyReLU or ELU instead of ReLU; He initialisation; smaller learning rate",
                "replace nn.ReLU() by nn.LeakyReLU(0.01)"))
    tiny = [layer for layer in d.layers if layer.weight_gain < TINY_GAIN]
    if tiny:
        out.append(Finding(
            "tiny-weights", "weights close to zero: layer gain rms(W)*sqrt(fan_in) under "
            f"{TINY_GAIN:g} in {', '.join(layer.name for layer in tiny)}",
            {layer.name: layer.weight_gain for layer in tiny},
            "proper weight initialisation (He for ReLU, Xavier for tanh/sigmoid)",
            'SynaPrune(model.parameters(), lr=..., noise=1e-3, noise_eps=1e-2, '
            'noise_trigger="stall")  # noise_eps moves weights that are ~0'))
    far = [layer for layer in d.layers
           if layer.spectral > SPECTRAL_FAR or layer.spectral < 1 / SPECTRAL_FAR]
    if far:
        out.append(Finding(
            "spectral-radius", "weight matrices whose spectral radius (or norm) is far from 1: "
            + ", ".join(f"{layer.name} {layer.spectral:.3g}" for layer in far),
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
