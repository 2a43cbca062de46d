"""What the run already uses, and what the lab measured: the data behind the diagnosis' remedies.

Two things decide whether a remedy is offered as a setting to try:

* the run's own optimizer (:func:`run_settings`): a remedy the run already uses is never
  recommended (an Adam run is not told ``base="adam"``);
* the lab's measurements (:data:`MEASURED`): on a problem of the same kind (the lab problem's
  name), a remedy the lab measured to do significantly worse than plain gradient descent is not
  recommended, and any other remedy that was measured is offered with what was measured.

Source of :data:`MEASURED`: docs/results.md, section "Every method on five problems" (every
method at the options tuned on that problem, docs/tuning.md; 64 evaluation seeds, 16 on
``autoencoder``; measured 2026-11-26). "Significantly" means the two 95 % Wilson intervals are
disjoint, the criterion docs/results.md itself uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["MEASURED", "RunSettings", "check_problem", "measured", "measured_summary",
           "run_settings"]

# (problem name, method name) -> (successes, seeds). Baseline: the row of "gd" (at its tuned
# learning rate) of the same problem. Problems: xor (2-2-1 sigmoid, MSE), teacher-student
# (exact=false, k=6: two-layer ReLU student, empirical MSE), gaussians, spirals (tanh
# classifier, cross-entropy), autoencoder (digits, ReLU, bottleneck 2).
MEASURED: dict[tuple[str, str], tuple[int, int]] = {
    ("xor", "gd"): (63, 64),
    ("xor", "adam"): (29, 64),
    ("xor", "synaprune-a"): (51, 64),
    ("xor", "synaprune-b"): (63, 64),
    ("xor", "synaprune-ab"): (51, 64),
    ("xor", "synaprune-c"): (53, 64),
    ("xor", "synaprune-ac"): (53, 64),
    ("xor", "synaprune-bc"): (53, 64),
    ("xor", "synaprune"): (53, 64),
    ("xor", "saddle-free-newton"): (57, 64),
    ("xor", "perturbed-gd"): (62, 64),
    ("teacher-student", "gd"): (60, 64),
    ("teacher-student", "adam"): (63, 64),
    ("teacher-student", "synaprune-a"): (61, 64),
    ("teacher-student", "synaprune-b"): (61, 64),
    ("teacher-student", "synaprune-ab"): (59, 64),
    ("teacher-student", "synaprune-c"): (39, 64),
    ("teacher-student", "synaprune-ac"): (42, 64),
    ("teacher-student", "synaprune-bc"): (46, 64),
    ("teacher-student", "synaprune"): (42, 64),
    ("teacher-student", "saddle-free-newton"): (63, 64),
    ("teacher-student", "perturbed-gd"): (61, 64),
    ("gaussians", "gd"): (24, 64),
    ("gaussians", "adam"): (31, 64),
    ("gaussians", "synaprune-a"): (20, 64),
    ("gaussians", "synaprune-b"): (25, 64),
    ("gaussians", "synaprune-ab"): (20, 64),
    ("gaussians", "synaprune-c"): (10, 64),
    ("gaussians", "synaprune-ac"): (19, 64),
    ("gaussians", "synaprune-bc"): (10, 64),
    ("gaussians", "synaprune"): (19, 64),
    ("gaussians", "saddle-free-newton"): (14, 64),
    ("gaussians", "perturbed-gd"): (24, 64),
    ("spirals", "gd"): (0, 64),
    ("spirals", "adam"): (4, 64),
    ("spirals", "synaprune-a"): (0, 64),
    ("spirals", "synaprune-b"): (0, 64),
    ("spirals", "synaprune-ab"): (0, 64),
    ("spirals", "synaprune-c"): (0, 64),
    ("spirals", "synaprune-ac"): (0, 64),
    ("spirals", "synaprune-bc"): (0, 64),
    ("spirals", "synaprune"): (0, 64),
    ("spirals", "saddle-free-newton"): (54, 64),
    ("spirals", "perturbed-gd"): (0, 64),
    ("autoencoder", "gd"): (4, 16),
    ("autoencoder", "adam"): (7, 16),
    ("autoencoder", "synaprune-a"): (8, 16),
    ("autoencoder", "synaprune-b"): (4, 16),
    ("autoencoder", "synaprune-ab"): (8, 16),
    ("autoencoder", "synaprune-c"): (5, 16),
    ("autoencoder", "synaprune-ac"): (10, 16),
    ("autoencoder", "synaprune-bc"): (5, 16),
    ("autoencoder", "synaprune"): (10, 16),
    ("autoencoder", "saddle-free-newton"): (16, 16),
    ("autoencoder", "perturbed-gd"): (2, 16),
}
SOURCE = "docs/results.md, every method on five problems"


@dataclass(frozen=True)
class Measurement:
    """One lab measurement of a method against ``gd`` on a problem.

    Attributes:
        problem, method: lab names.
        successes, seeds: the method's successes out of seeds.
        gd_successes, gd_seeds: the same for ``gd`` at its tuned learning rate.
        effect: ``"hurts"`` or ``"helps"`` (95 % Wilson intervals disjoint), else ``"same"``.
    """

    problem: str
    method: str
    successes: int
    seeds: int
    gd_successes: int
    gd_seeds: int
    effect: str

    def text(self) -> str:
        """e.g. ``"on xor the lab measured synaprune-a 51/64 against gd's 63/64"``."""
        word = {"hurts": "significantly worse than", "helps": "significantly better than",
                "same": "no significant difference from"}[self.effect]
        return (f"on {self.problem} the lab measured {self.method} {self.successes}/"
                f"{self.seeds} against gd's {self.gd_successes}/{self.gd_seeds}, {word} gd "
                f"({SOURCE})")


def check_problem(problem: str | None) -> str | None:
    """The lab problem name of ``problem`` (a name or spec), or None.

    Raises:
        ValueError: a name that is not a lab problem.
    """
    from synaprune.problems import list_problems

    name = _problem_name(problem)
    if name is not None and name not in list_problems():
        raise ValueError(f"unknown lab problem {name!r}; expected one of "
                         f"{', '.join(list_problems())}")
    return name


def _problem_name(problem: str | None) -> str | None:
    if problem is None:
        return None
    return problem.partition(":")[0].strip() or None


def measured(problem: str | None, method: str | None) -> Measurement | None:
    """The lab's measurement of ``method`` on problems like ``problem`` (a lab name or spec).

    Returns:
        The :class:`Measurement`, or None when the lab did not measure that pair.
    """
    from synaprune.bench.summary import wilson_interval

    name = _problem_name(problem)
    if name is None or method is None or (name, method) not in MEASURED:
        return None
    s, n = MEASURED[(name, method)]
    gs, gn = MEASURED[(name, "gd")]
    low, high = wilson_interval(s, n)
    glow, ghigh = wilson_interval(gs, gn)
    effect = "hurts" if high < glow else "helps" if low > ghigh else "same"
    return Measurement(name, method, s, n, gs, gn, effect)


def measured_summary(problem: str | None) -> str:
    """One sentence: which methods the lab measured better or worse than gd on ``problem``."""
    name = _problem_name(problem)
    rows = [measured(name, m) for (p, m) in MEASURED if p == name and m != "gd"]
    found = [r for r in rows if r is not None]
    if not found:
        return ""
    gd = MEASURED[(str(name), "gd")]
    parts = []
    for effect, word in (("helps", "better"), ("hurts", "worse")):
        hits = [f"{r.method} {r.successes}/{r.seeds}" for r in found if r.effect == effect]
        if hits:
            parts.append(f"significantly {word} than gd: {', '.join(hits)}")
    same = [r.method for r in found if r.effect == "same"]
    if same:
        parts.append(f"no significant difference: {', '.join(same)}")
    return (f"on {name} the lab measured gd (at its tuned learning rate) {gd[0]}/{gd[1]}; "
            + "; ".join(parts) + f" ({SOURCE})")


@dataclass(frozen=True)
class RunSettings:
    """What the optimizer of the run already does (as far as it can be read).

    Attributes:
        name: the lab method's name (``"adam"``, ``"synaprune-a"``, ...) when known, else None.
        description: how the run was described, for messages (e.g. ``"torch.optim.Adam"``).
        per_coordinate: a per-coordinate step size (Adam and its relatives, RMSprop, Adagrad,
            SynaPrune with ``base="adam"``).
        aggregation: SynaPrune's mechanism A: ``"mean"`` (off), ``"blend"`` or ``"rms"``.
        blend: lambda of ``aggregation="blend"``, else None.
        noise: weight noise or perturbations (mechanism B, perturbed GD, gradient noise).
        noise_eps: SynaPrune's noise floor ``noise_eps`` is at least 1e-3, within 10x of the
            1e-2 the tiny-weights remedy suggests (the default 1e-8 barely moves a zero weight).
        penalty: mechanism C, the activation-gradient penalty.
        saddle_free: saddle-free Newton.
        restarts: restarts from fresh initialisations (the lab's ``gd-restarts``).
    """

    name: str | None = None
    description: str = "unknown"
    per_coordinate: bool = False
    aggregation: str = "mean"
    blend: float | None = None
    noise: bool = False
    noise_eps: bool = False
    penalty: bool = False
    saddle_free: bool = False
    restarts: bool = False

    def uses(self, feature: str) -> bool:
        """Whether the run already uses ``feature`` (one of the remedies' features)."""
        if feature == "adam":
            return self.per_coordinate
        if feature == "blend":  # any per-example aggregation
            return self.aggregation in ("blend", "rms")
        if feature == "rms":
            return self.aggregation == "rms"
        if feature == "noise":
            return self.noise
        if feature == "noise_eps":
            return self.noise and self.noise_eps
        if feature == "saddle-free":
            return self.saddle_free
        if feature == "restarts":
            return self.restarts
        raise ValueError(f"unknown feature {feature!r}")

    def said(self, feature: str) -> str:
        """How the run uses ``feature``, for a message."""
        if feature == "adam":
            return "a per-coordinate step size (Adam)"
        if feature in ("blend", "rms"):
            lam = f" {self.blend:g}" if self.aggregation == "blend" and self.blend is not None \
                else ""
            return f'aggregation="{self.aggregation}"{lam} (mechanism A)'
        if feature == "noise_eps":
            return "weight noise with a floor noise_eps (mechanism B)"
        if feature == "noise":
            return "weight noise or perturbations (mechanism B)"
        if feature == "restarts":
            return "restarts from fresh initialisations"
        return "saddle-free Newton"


_PER_COORDINATE = ("Adam", "AdamW", "NAdam", "RAdam", "Adamax", "Adagrad", "RMSprop",
                   "Adadelta", "SparseAdam")


def run_settings(method: Any) -> RunSettings:
    """Read what a run's optimizer does.

    Args:
        method: None (unknown); a lab method spec string (``"adam:lr=0.01"``) or
            :class:`synaprune.bench.Method`; or a ``torch.optim.Optimizer`` instance
            (:class:`synaprune.SynaPrune` is read from its first parameter group:
            ``base``, ``aggregation``, ``blend``, ``noise``).

    Returns:
        A :class:`RunSettings`.

    Raises:
        ValueError: a string that is not a lab method spec, or an object of another type.
    """
    from torch.optim import Optimizer

    from synaprune.bench.methods import Method, get_method
    from synaprune.optim import SaddleFreeNewton, SynaPrune

    if method is None:
        return RunSettings()
    if isinstance(method, str):
        method = get_method(method)
    if isinstance(method, Method):
        aggregation = getattr(method, "aggregation", "mean")
        blend = getattr(method, "blend", None) if aggregation == "blend" else None
        # synaprune-escape sets its noise through the preset, not a noise option
        noisy = method.name in ("perturbed-gd", "gradient-noise", "synaprune-escape") or (
            float(getattr(method, "noise", 0.0) or 0.0) > 0)
        return RunSettings(
            name=method.name, description=method.spec,
            per_coordinate=method.name == "adam" or getattr(method, "base", "") == "adam",
            aggregation=aggregation, blend=blend, noise=noisy,
            penalty=method.penalty is not None,
            saddle_free=method.name == "saddle-free-newton",
            restarts=method.name == "gd-restarts")
    if isinstance(method, SynaPrune):
        group = method.param_groups[0]
        aggregation = group["aggregation"]
        return RunSettings(
            description="SynaPrune", per_coordinate=group["base"] == "adam",
            aggregation=aggregation,
            blend=group["blend"] if aggregation == "blend" else None,
            noise=float(group["noise"]) > 0, noise_eps=float(group["noise_eps"]) >= 1e-3)
    if isinstance(method, SaddleFreeNewton):
        return RunSettings(name="saddle-free-newton", description="SaddleFreeNewton",
                           saddle_free=True)
    if isinstance(method, Optimizer):
        cls = type(method).__name__
        name = {"Adam": "adam", "SGD": "gd"}.get(cls)
        if cls == "SGD" and method.param_groups[0].get("momentum", 0):
            name = "momentum"
        return RunSettings(name=name, description=f"torch.optim.{cls}",
                           per_coordinate=cls in _PER_COORDINATE)
    raise ValueError(f"method must be None, a lab method spec or Method, or a "
                     f"torch.optim.Optimizer, got {type(method).__name__}")
