"""The structured report of :func:`synaprune.diagnose.diagnose`: dataclasses, JSON, text."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

KINDS = ("global minimum", "minimum at infinity", "not a critical point",
         "ill-conditioned valley", "local minimum", "saddle", "plateau")


def _fmt(value: Any, spec: str = ".3g") -> str:
    """A number for the text report: "n/a" for nan or None, "unbounded" for an infinity."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "unbounded" if value > 0 else "-unbounded"
    return format(value, spec)


def _jsonable(value: Any) -> Any:
    """Plain JSON types: non-finite floats become None, tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class Finding:
    """One flag raised by the diagnosis, with its evidence and what to try.

    Attributes:
        code: short machine-readable name, e.g. ``"dead-units"`` or ``"vanishing-gradients"``.
        message: one sentence saying what was measured and why it matters.
        evidence: the numbers behind the flag (plain floats, ints, strings, lists of them).
        remedy: the remedy from the seeds (initialisation, activation, normalisation, ...).
        setting: a SynaPrune (or PyTorch) setting to try, as code; ``""`` when none applies
            (or when the run already uses it, or the lab measured it to hurt on a problem of
            the same kind: the remedy then says so).
        measured: what the lab measured for the setting on a problem of the same kind, with
            its source; ``""`` when nothing was measured.
    """

    code: str
    message: str
    evidence: dict[str, Any]
    remedy: str
    setting: str = ""
    measured: str = ""


@dataclass
class LayerReport:
    """Statistics of one parameterised layer (a module with a weight of 2 or more dimensions).

    Attributes:
        name: the module's name in ``model.named_modules()``.
        shape: the weight's shape.
        weight_norm: ||W||_F.
        weight_gain: rms(W) * sqrt(fan_in), the factor by which the layer scales the size of
            its input (PyTorch's default init gives about 0.58, He init sqrt(2)).
        spectral: spectral radius max|eig(W)| for a square matrix, else the largest singular
            value of W reshaped to [out, fan_in].
        spectral_kind: ``"radius"`` or ``"norm"``, which of the two ``spectral`` is.
        grad_norm: ||dL/dW||_F for the mean loss L.
        relative_grad: grad_norm / weight_norm (nan when W = 0).
        backward_rms: root mean square of d(sum_i l_i)/d(output) over examples and units: the
            size of the error signal reaching this layer, per example.
    """

    name: str
    shape: list[int]
    weight_norm: float
    weight_gain: float
    spectral: float
    spectral_kind: str
    grad_norm: float
    relative_grad: float
    backward_rms: float


@dataclass
class Diagnosis:
    """What :func:`synaprune.diagnose.diagnose` found at one point of parameter space.

    All norms are Euclidean norms over every parameter that requires grad, flattened in
    ``model.parameters()`` order; the loss is the dataset's mean loss.

    Attributes:
        kind: one of :data:`KINDS`.
        reason: one sentence: which test decided ``kind``.
        loss: L, the mean loss.
        grad_norm: ||g||, g the gradient of L.
        param_norm: ||theta||.
        relative_grad: ||g|| * max(||theta||, 1) / L', the log-log slope of the loss along the
            gradient (dimensionless); L' = max(L - floor, (GLOBAL_ULPS eps)^2 S), the loss's
            distance to its floor, at least rounding relative to its scale S
            (``loss_reference``).
        ghg, gg, curvature_along_gradient: g^T H g, g^T g and their ratio.
        best_step_decrease: (g^T g)^2 / (2 g^T H g), the most a step along -g can lower the loss
            to second order (inf when g^T H g <= 0), and ``relative_best_decrease`` that over L.
        eigenvalues_smallest, eigenvalues_largest: the k algebraically smallest and largest
            Hessian eigenvalues from Lanczos, ascending.
        eigen_converged: whether Lanczos met its tolerance.
        relative_curvature: max|eig| * max(||theta||, 1)^2 / L'.
        index: share of Hessian eigenvalues below -NEG_EIG_TOL * max|eig| (Dauphin et al. 2014),
            counted among the k smallest (the saddle's index when ``kind == "saddle"``);
            ``index_is_lower_bound`` is True when all k were
            negative (there may be more). ``num_negative`` is that count, ``num_params`` is n.
        cancellation: ||gbar|| / sqrt(mean_i ||g_i||^2) in [0, 1] (nan if unavailable),
            ``cancelled_share`` the share of coordinates with c = |gbar| / r < CANCELLED_C.
        history: gradient-norm (and loss) trend when a history was given, else {}.
        layers: one :class:`LayerReport` per parameterised layer, in forward order.
        dead_units: per ReLU module name, the share of its units whose output is 0 on every
            example.
        inputs: input scale statistics (per-feature mean and std summaries).
        findings: every flag raised, each with its remedy and setting.
        notes: anything the diagnosis could not compute, and why.
        loss_floor: the loss's known floor (``diagnose(loss_floor=...)``), None if unknown.
        loss_reference: S, the loss of the null prediction ``loss_fn(0, y)`` above the floor
            (mean(y^2) for MSE, log C for cross-entropy), the loss's scale.
        saturated: per ``nn.Sigmoid``/``nn.Tanh`` module name, the share of its (example,
            unit) outputs whose derivative is under SATURATED_DERIV of the largest.
        labels: module name -> readable label, e.g. ``"0 (Linear 4→8)"``.
        method: how the run's optimizer was described (``"unknown"`` when not given).
        problem: the lab problem the remedies were measured against, or None.
    """

    kind: str
    reason: str
    loss: float
    grad_norm: float
    param_norm: float
    relative_grad: float
    ghg: float
    gg: float
    curvature_along_gradient: float
    best_step_decrease: float
    relative_best_decrease: float
    eigenvalues_smallest: list[float]
    eigenvalues_largest: list[float]
    eigen_converged: bool
    relative_curvature: float
    index: float
    num_negative: int
    index_is_lower_bound: bool
    num_params: int
    num_examples: int
    cancellation: float
    cancelled_share: float
    history: dict[str, Any] = field(default_factory=dict)
    layers: list[LayerReport] = field(default_factory=list)
    dead_units: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, float] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    loss_floor: float | None = 0.0
    loss_reference: float = math.nan
    saturated: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    method: str = "unknown"
    problem: str | None = None

    def codes(self) -> list[str]:
        """The codes of all findings, in order."""
        return [f.code for f in self.findings]

    def finding(self, code: str) -> Finding | None:
        """The first finding with this code, or None."""
        return next((f for f in self.findings if f.code == code), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats become None)."""
        return _jsonable(dataclasses.asdict(self))

    def format(self) -> str:
        """A readable multi-line text report (no nan or inf: "n/a" and "unbounded")."""
        label = self.labels.get
        lines = [f"Verdict: {self.kind}"]
        if self.kind == "saddle":
            bound = ">= " if self.index_is_lower_bound else ""
            lines[0] += f" (index {bound}{self.index:.3g}: {self.num_negative} of "
            lines[0] += f"{self.num_params} eigenvalues negative)"
        lines.append(f"  because {self.reason}")
        lines.append("Evidence:")
        lines.append(f"  loss {_fmt(self.loss, '.6g')}, ||g|| {_fmt(self.grad_norm)}, ||theta|| "
                     f"{_fmt(self.param_norm)}, relative gradient {_fmt(self.relative_grad)}")
        if self.gg > 0 and self.ghg > 0:
            along = (f"curvature along g {_fmt(self.curvature_along_gradient)}; best step "
                     f"lowers the loss by {_fmt(self.relative_best_decrease)} of itself")
        elif self.gg > 0:
            along = ("curvature along g is not positive: a step along -g lowers the loss with "
                     "no second-order bound")
        else:
            along = "the gradient is exactly zero"
        lines.append(f"  g^T H g {_fmt(self.ghg)} vs g^T g {_fmt(self.gg)} ({along})")
        small = ", ".join(_fmt(v) for v in self.eigenvalues_smallest)
        large = ", ".join(_fmt(v) for v in self.eigenvalues_largest)
        conv = "" if self.eigen_converged else " (Lanczos did NOT converge)"
        lines.append(f"  Hessian eigenvalues: smallest [{small}], largest [{large}]{conv}")
        if self.cancellation == self.cancellation:
            lines.append(f"  cancellation ||gbar||/sqrt(mean ||g_i||^2) "
                         f"{_fmt(self.cancellation)}; {_fmt(100 * self.cancelled_share, '.1f')}% "
                         "of coordinates with c < 0.1")
        else:
            lines.append("  cancellation: not computed (see the notes)")
        if self.history:
            lines.append("  history: " + ", ".join(
                f"{k} {', '.join(map(str, v))}" if isinstance(v, list) else f"{k} {_fmt(v)}"
                for k, v in self.history.items()))
        if self.method != "unknown" or self.problem:
            lines.append(f"  run: method {self.method}; remedies measured against problem "
                         f"{self.problem or 'not given'}")
        if self.layers:
            lines.append("Layers (layer, gain, spectral, ||dW||/||W||, backward rms):")
            width = max(len(label(layer.name, layer.name)) for layer in self.layers)
            for layer in self.layers:
                lines.append(f"  {label(layer.name, layer.name):<{width}} "
                             f"{_fmt(layer.weight_gain):>9} {_fmt(layer.spectral):>9} "
                             f"{_fmt(layer.relative_grad):>9} {_fmt(layer.backward_rms):>9}")
        if self.dead_units:
            lines.append("Dead ReLU units (output 0 on every example): " + "; ".join(
                f"{label(k, k)}: {100 * v:.0f}%" for k, v in self.dead_units.items()))
        if self.saturated:
            lines.append("Saturated sigmoid/tanh outputs (derivative under 1% of its largest): "
                         + "; ".join(f"{label(k, k)}: {100 * v:.0f}%"
                                     for k, v in self.saturated.items()))
        if self.findings:
            lines.append("Findings:")
            for f in self.findings:
                lines.append(f"  [{f.code}] {f.message}")
                lines.append(f"      remedy: {f.remedy}")
                if f.setting:
                    lines.append(f"      try: {f.setting}")
                if f.measured and f.measured not in f.remedy:
                    lines.append(f"      measured: {f.measured}")
        else:
            lines.append("Findings: none")
        for note in self.notes:
            lines.append(f"Note: {note}")
        return "\n".join(lines)
