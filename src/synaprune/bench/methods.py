"""Registry of training methods for the lab: one small dataclass per method.

Each method is a frozen dataclass whose fields are its options (with defaults) and whose
:meth:`Method.make_optimizer` returns the ordinary optimizer (``torch.optim.SGD``,
``torch.optim.Adam`` or :class:`synaprune.SynaPrune`). The same object drives the vectorised
runner (one optimizer over stacked ``[S, ...]`` tensors) and a plain single-seed loop, so there
is exactly one implementation of each method.

Available methods:

* ``gd``: full-batch gradient descent (``torch.optim.SGD``).
* ``sgd``: minibatch SGD; per-seed minibatches (``batch_size`` examples, reshuffled every
  epoch, last partial batch dropped) drawn from a generator seeded with the run's seed.
* ``momentum``: heavy-ball SGD (torch's convention), full batch unless ``batch_size`` is set.
* ``adam``: ``torch.optim.Adam``, full batch unless ``batch_size`` is set.
* ``synaprune-a``: deterministic SynaPrune, mechanism A only (``aggregation`` ``blend`` or
  ``rms`` from per-example gradient statistics, no weight noise); needs a per-example problem.
* ``perturbed-gd``: :class:`synaprune.optim.PerturbedGD` (Jin et al. 2017).
* ``gradient-noise``: :class:`synaprune.optim.GradientNoise` (Neelakantan et al. 2015).
* ``sam``: :class:`synaprune.optim.SAM` (Foret et al. 2021); needs a closure.
* ``synaprune-b``: SynaPrune, mechanism B only (magnitude-proportional weight noise).
* ``synaprune-ab``: SynaPrune, mechanisms A and B.
* ``synaprune-c``, ``synaprune-ac``, ``synaprune-bc``, ``synaprune`` (all three): mechanism C,
  the activation-gradient penalty (:class:`synaprune.ActivationGradientPenalty` in the plain
  loop, :class:`synaprune.bench.penalty.StackedPenalty` in the seed-batched runner), alone or
  with A and/or B; per-example problems (hidden modules: the problem's ``hidden_modules``).
* ``saddle-free-newton``: :class:`synaprune.SaddleFreeNewton` (Dauphin et al. 2014), full
  batch, for small models: |H|^-1 g in a Krylov subspace; needs a loss closure.

Noise: :meth:`Method.make_optimizer` takes ``generator``, one ``torch.Generator`` (one model)
or a sequence of S of them (stacked ``[S, ...]`` parameters, model s draws from generator s
exactly what it would draw alone; the optimizer gets ``num_models=S``, the stacked-mode
convention of :mod:`synaprune.optim`); the runner derives seed s's generator with
:func:`synaprune.bench.runner.noise_generator`.

To add a method, subclass :class:`Method`, give it a ``name`` and
option fields (each with ``metadata={"kind": ..., "help": ...}``), implement
:meth:`Method.make_optimizer` and register it in ``_METHODS``.

Defaults. Each class's own defaults (used when no problem is given, and by ``synaprune bench
--defaults plain``) are the paper's where it gives a usable value, otherwise a first pass on
``xor`` (seeds 1000-1031, 1000 steps; knobs tuned at lr=2 with ``lr`` left at gd's 0.1). On the
lab's problems, :func:`get_method` with ``problem=`` (and ``synaprune bench``) starts instead
from the options tuned on that problem by ``scripts/tune_methods.py``: tuning seeds 1000 and up
(no reported table uses them), the same learning-rate grid and knob grids for every method,
scored by successes, then median final loss; protocol, grids and every cell's score are in
``docs/tuning.md``.

Spec strings: ``name`` or ``name:key=value,...``, e.g. ``adam:lr=0.01,betas=(0.9,0.99)``.
Tuples are written in parentheses; ``none`` means None.

Example:
    >>> from synaprune.bench import get_method
    >>> method = get_method("adam:lr=0.01")
    >>> method.spec
    'adam:batch_size=none,betas=(0.9,0.999),eps=1e-08,lr=0.01'
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from synaprune.optim import SAM, GradientNoise, PerturbedGD, SaddleFreeNewton, SynaPrune

__all__ = [
    "PLANNED_METHODS",
    "Adam",
    "GradientDescent",
    "GradientNoiseMethod",
    "Method",
    "MinibatchSGD",
    "Momentum",
    "PerturbedGDMethod",
    "SAMMethod",
    "SaddleFreeNewtonMethod",
    "SynaPruneA",
    "SynaPruneAB",
    "SynaPruneABC",
    "SynaPruneAC",
    "SynaPruneB",
    "SynaPruneBC",
    "SynaPruneC",
    "get_method",
    "list_methods",
    "parse_method_list",
    "tuned_options",
]

PLANNED_METHODS: tuple[str, ...] = ()

Generators = torch.Generator | Sequence[torch.Generator] | None


def _num_models(generator: Generators) -> int | None:
    """S for a sequence of S generators (stacked parameters), None for one model: the
    ``num_models`` of :mod:`synaprune.optim`'s stacked mode."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    return len(generator)

_INT = re.compile(r"[+-]?\d+")


def _opt(default: Any, kind: str, help: str) -> Any:
    """A dataclass field carrying its option kind (``int``, ``float``, ``bool``, ``str``,
    ``pair``; ``?`` suffix: may be None) and a one-line help."""
    return field(default=default, metadata={"kind": kind, "help": help})


@dataclass(frozen=True)
class Method:
    """Base class of the registered methods.

    Attributes:
        name: Registry name (class attribute).
        per_example_stats: Whether the optimizer reads per-example gradient statistics
            (``p.grad_sumsq``, ``p.grad_batch_size``, ``p.grad_reduction``) (class attribute).
        needs_closure: Whether ``step`` needs a closure that zeroes the gradients, re-evaluates
            the loss at the current parameters (same batch) and back-propagates (class
            attribute; ``sam``).
        loss_closure: Whether ``step`` needs a closure that re-evaluates the loss at the
            current parameters (same batch) and returns it with its autograd graph, WITHOUT
            back-propagating; the optimizer differentiates it itself (class attribute;
            ``saddle-free-newton``, which needs Hessian-vector products). In the seed-batched
            runner the closure returns the sum of the active seeds' losses.
        stochastic: Whether the optimizer draws from its ``generator`` (class attribute).
        penalty: ``(beta, gamma)`` of mechanism C (the activation-gradient penalty the runner
            adds to the training loss), or None.
    """

    name: ClassVar[str] = ""
    per_example_stats: ClassVar[bool] = False
    needs_closure: ClassVar[bool] = False
    loss_closure: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False

    @property
    def batch_size(self) -> int | None:
        """Minibatch size, or None for the full batch (or an exact loss).

        Methods with a ``batch_size`` option override this with their field.
        """
        return None

    @property
    def penalty(self) -> tuple[float, float] | None:
        """``(beta, gamma)`` of mechanism C, or None; methods with a penalty override this."""
        return None

    @property
    def options(self) -> dict[str, Any]:
        """All options, resolved, as a JSON-friendly dict (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def spec(self) -> str:
        """Canonical spec, ``name:key=value,...`` with every option, sorted by key."""
        parts = [f"{k}={_format(getattr(self, k))}" for k in sorted(self._fields())]
        return f"{self.name}:{','.join(parts)}" if parts else self.name

    @classmethod
    def _fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        """Build the ordinary optimizer for these parameters.

        Args:
            params: Parameters of one model, or stacked ``[S, ...]`` leaf tensors of S seeds
                (every update is elementwise or per model, so the stacked update equals S
                separate ones).
            generator: Noise source: a ``torch.Generator`` for one model, a sequence of S
                generators for stacked parameters (required then by the stochastic methods
                and SAM), or None (a stochastic method seeds itself from torch's global
                generator). Deterministic methods ignore it.

        Returns:
            A ``torch.optim.Optimizer``.
        """
        raise NotImplementedError


def _format(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "(" + ",".join(_format(v) for v in value) + ")"
    return str(value)


def _check_batch(batch_size: int | None) -> None:
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"Invalid batch_size: {batch_size}; must be >= 1 or none")


def _check_lr(lr: float) -> None:
    if not (math.isfinite(lr) and lr >= 0.0):
        raise ValueError(f"Invalid learning rate: {lr}")


@dataclass(frozen=True)
class GradientDescent(Method):
    """``gd``: full-batch gradient descent, ``torch.optim.SGD(lr=lr)``."""

    name: ClassVar[str] = "gd"
    lr: float = _opt(0.1, "float", "step size")

    def __post_init__(self) -> None:
        _check_lr(self.lr)

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        return torch.optim.SGD(params, lr=self.lr)


@dataclass(frozen=True)
class MinibatchSGD(Method):
    """``sgd``: minibatch SGD, ``torch.optim.SGD(lr=lr)`` on per-seed minibatches."""

    name: ClassVar[str] = "sgd"
    lr: float = _opt(0.1, "float", "step size")
    batch_size: int = _opt(32, "int", "examples per minibatch")  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        _check_batch(self.batch_size)

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        return torch.optim.SGD(params, lr=self.lr)


@dataclass(frozen=True)
class Momentum(Method):
    """``momentum``: ``torch.optim.SGD(lr, momentum, nesterov)`` (v <- mu v + g; p <- p - lr v)."""

    name: ClassVar[str] = "momentum"
    lr: float = _opt(0.05, "float", "step size")
    momentum: float = _opt(0.9, "float", "momentum factor mu")
    nesterov: bool = _opt(False, "bool", "Nesterov momentum")
    batch_size: int | None = _opt(None, "int?", "minibatch size; none: full batch")  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        _check_batch(self.batch_size)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"Invalid momentum value: {self.momentum}; must be in [0, 1)")

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                               nesterov=self.nesterov)


@dataclass(frozen=True)
class Adam(Method):
    """``adam``: ``torch.optim.Adam(lr, betas, eps)``."""

    name: ClassVar[str] = "adam"
    lr: float = _opt(0.01, "float", "step size")
    betas: tuple[float, float] = _opt((0.9, 0.999), "pair", "(beta1,beta2)")
    eps: float = _opt(1e-8, "float", "denominator epsilon")
    batch_size: int | None = _opt(None, "int?", "minibatch size; none: full batch")  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        _check_batch(self.batch_size)
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"Invalid betas: {self.betas}; each must be in [0, 1)")
        if not self.eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {self.eps}")

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        return torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=self.eps)


@dataclass(frozen=True)
class SynaPruneA(Method):
    """``synaprune-a``: :class:`synaprune.SynaPrune` with mechanism A only (no noise).

    ``aggregation="blend"`` uses d = gbar + blend * sign(gbar) * (r - |gbar|); ``"rms"`` is
    blend = 1. Deterministic: the optimizer is built with ``noise=0`` and a fixed seed, so it
    never draws from torch's global random state.
    """

    name: ClassVar[str] = "synaprune-a"
    per_example_stats: ClassVar[bool] = True
    lr: float = _opt(0.1, "float", "step size")
    base: str = _opt("sgd", "str", "base update: sgd or adam")
    momentum: float = _opt(0.0, "float", "momentum of the sgd base")
    aggregation: str = _opt("blend", "str", "blend or rms")
    blend: float = _opt(0.5, "float", "lam in [0, 1] for blend")
    blend_schedule: str = _opt("constant", "str", "constant, linear or cosine decay of lam")
    blend_steps: int | None = _opt(None, "int?", "length of the lam decay")
    batch_size: int | None = _opt(None, "int?", "minibatch size; none: full batch")  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _check_batch(self.batch_size)
        if self.aggregation not in ("blend", "rms"):
            raise ValueError(f"Invalid aggregation: {self.aggregation!r}; choose blend or rms")
        self.make_optimizer([torch.zeros(1, dtype=torch.float64, requires_grad=True)],
                            torch.Generator())

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        return SynaPrune(params, lr=self.lr, base=self.base, momentum=self.momentum,
                         aggregation=self.aggregation, **_a_kwargs(self),
                         noise=0.0, seed=0, distributed=False,
                         num_models=_num_models(generator))


@dataclass(frozen=True)
class PerturbedGDMethod(Method):
    """``perturbed-gd``: :class:`synaprune.optim.PerturbedGD` (Jin et al. 2017).

    Defaults: the paper's r, g_thres and t_thres are formulas in the (unknown) gradient and
    Hessian Lipschitz constants, so they are not usable as given; ``radius`` and ``threshold``
    are tuned on xor (module docstring), ``t_thres`` is SynaPrune's ``noise_cooldown`` (it made
    no difference in the tuning), ``lr`` as ``gd``.
    """

    name: ClassVar[str] = "perturbed-gd"
    stochastic: ClassVar[bool] = True
    lr: float = _opt(0.1, "float", "step size")  # as gd
    radius: float = _opt(2.0, "float", "radius r of the uniform-ball kick")  # tuned on xor
    threshold: float = _opt(1e-3, "float", "gradient-norm threshold g_thres")  # tuned on xor
    t_thres: int = _opt(50, "int", "steps without a kick after each kick")  # SynaPrune's cooldown

    def __post_init__(self) -> None:
        self.make_optimizer([torch.zeros(1, dtype=torch.float64, requires_grad=True)],
                            torch.Generator())

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        return PerturbedGD(params, lr=self.lr, radius=self.radius, threshold=self.threshold,
                           t_thres=self.t_thres, generator=generator,
                           num_models=_num_models(generator))


@dataclass(frozen=True)
class GradientNoiseMethod(Method):
    """``gradient-noise``: :class:`synaprune.optim.GradientNoise` (Neelakantan et al.
    2015): SGD on g + N(0, eta / (1 + t)**gamma).

    Defaults: ``gamma=0.55`` is the paper's; ``eta=0.003`` is tuned on xor (the paper's grid
    {0.01, 0.3, 1.0} did worse there); ``lr`` as ``gd``.
    """

    name: ClassVar[str] = "gradient-noise"
    stochastic: ClassVar[bool] = True
    lr: float = _opt(0.1, "float", "step size")  # as gd
    eta: float = _opt(0.003, "float", "initial noise variance eta")  # tuned on xor
    gamma: float = _opt(0.55, "float", "variance decay exponent")  # paper
    momentum: float = _opt(0.0, "float", "heavy-ball momentum")
    batch_size: int | None = _opt(None, "int?", "minibatch size; none: full batch")  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _check_batch(self.batch_size)
        self.make_optimizer([torch.zeros(1, dtype=torch.float64, requires_grad=True)],
                            torch.Generator())

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        return GradientNoise(params, lr=self.lr, eta=self.eta, gamma=self.gamma,
                             momentum=self.momentum, generator=generator,
                             num_models=_num_models(generator))


@dataclass(frozen=True)
class SAMMethod(Method):
    """``sam``: :class:`synaprune.optim.SAM` (Foret et al. 2021), two gradients a step.

    Defaults: ``rho=0.05`` is the paper's default (no rho beat gd in the tuning on xor); ``lr``
    as ``gd``, no momentum.
    """

    name: ClassVar[str] = "sam"
    needs_closure: ClassVar[bool] = True
    lr: float = _opt(0.1, "float", "step size")  # as gd
    rho: float = _opt(0.05, "float", "radius of the ascent step")  # paper default
    momentum: float = _opt(0.0, "float", "heavy-ball momentum")
    batch_size: int | None = _opt(None, "int?", "minibatch size; none: full batch")  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _check_batch(self.batch_size)
        self.make_optimizer([torch.zeros(1, dtype=torch.float64, requires_grad=True)])

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        return SAM(params, lr=self.lr, rho=self.rho, momentum=self.momentum,
                   num_models=_num_models(generator))


# Mechanism B's options, shared by synaprune-b and synaprune-ab. noise=0.01 and the stall trigger
# with threshold 1e-3 are the tied-best of the tuning on xor (no setting beat gd there);
# stall_steps and noise_cooldown are SynaPrune's own defaults (stall rule of Jin et al. 2017).
_B_FIELDS = ("noise", "noise_schedule", "noise_gamma", "noise_clip", "noise_trigger",
             "stall_threshold", "stall_steps", "noise_cooldown")


def _b_kwargs(method: Method) -> dict[str, Any]:
    # SynaPrune refuses options that have no effect: the anneal exponent goes only with the
    # anneal schedule, the stall options only with the stall trigger.
    skip = set() if method.noise_schedule == "anneal" else {"noise_gamma"}  # type: ignore[attr-defined]
    if method.noise_trigger != "stall":  # type: ignore[attr-defined]
        skip |= {"stall_threshold", "stall_steps", "noise_cooldown"}
    return {k: getattr(method, k) for k in _B_FIELDS if k not in skip}


def _a_kwargs(method: Method) -> dict[str, Any]:
    """Mechanism A's options for SynaPrune: ``blend`` only with ``aggregation=blend`` (``rms``
    is blend 1, and SynaPrune refuses a blend that would have no effect)."""
    out: dict[str, Any] = dict(blend_schedule=method.blend_schedule,  # type: ignore[attr-defined]
                               blend_steps=method.blend_steps)  # type: ignore[attr-defined]
    if method.aggregation == "blend":  # type: ignore[attr-defined]
        out["blend"] = method.blend  # type: ignore[attr-defined]
    return out


@dataclass(frozen=True)
class SynaPruneB(Method):
    """``synaprune-b``: :class:`synaprune.SynaPrune` with mechanism B only.

    theta <- theta + sigma_t * (|theta| + eps0) * xi after a plain SGD (or Adam) step, every
    step (``noise_trigger=always``) or after a stall. Model s draws from generator s.
    """

    name: ClassVar[str] = "synaprune-b"
    stochastic: ClassVar[bool] = True
    lr: float = _opt(0.1, "float", "step size")  # as gd
    base: str = _opt("sgd", "str", "base update: sgd or adam")
    momentum: float = _opt(0.0, "float", "momentum of the sgd base")
    noise: float = _opt(0.01, "float", "relative noise scale sigma_0")  # tuned on xor
    noise_schedule: str = _opt("constant", "str", "constant, exponential or anneal")
    noise_gamma: float = _opt(0.55, "float", "anneal exponent")  # Neelakantan et al.
    noise_clip: float | None = _opt(None, "float?", "cap on the relative kick; none: no cap")
    noise_trigger: str = _opt("stall", "str", "always or stall")
    stall_threshold: float = _opt(1e-3, "float", "gradient norm of a stalled step")
    stall_steps: int = _opt(10, "int", "stalled steps before a kick")
    noise_cooldown: int = _opt(50, "int", "steps without a kick after each kick")
    batch_size: int | None = _opt(None, "int?", "minibatch size; none: full batch")  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _check_batch(self.batch_size)
        self.make_optimizer([torch.zeros(1, dtype=torch.float64, requires_grad=True)],
                            torch.Generator())

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        return SynaPrune(params, lr=self.lr, base=self.base, momentum=self.momentum,
                         aggregation="mean", generator=generator, distributed=False,
                         num_models=_num_models(generator), **_b_kwargs(self))


@dataclass(frozen=True)
class SynaPruneAB(Method):
    """``synaprune-ab``: :class:`synaprune.SynaPrune` with mechanisms A and B (options as in
    ``synaprune-a`` and ``synaprune-b``); needs a per-example problem."""

    name: ClassVar[str] = "synaprune-ab"
    per_example_stats: ClassVar[bool] = True
    stochastic: ClassVar[bool] = True
    lr: float = _opt(0.1, "float", "step size")
    base: str = _opt("sgd", "str", "base update: sgd or adam")
    momentum: float = _opt(0.0, "float", "momentum of the sgd base")
    aggregation: str = _opt("blend", "str", "blend or rms")
    blend: float = _opt(0.5, "float", "lam in [0, 1] for blend")
    blend_schedule: str = _opt("constant", "str", "constant, linear or cosine decay of lam")
    blend_steps: int | None = _opt(None, "int?", "length of the lam decay")
    noise: float = _opt(0.01, "float", "relative noise scale sigma_0")  # tuned on xor
    noise_schedule: str = _opt("constant", "str", "constant, exponential or anneal")
    noise_gamma: float = _opt(0.55, "float", "anneal exponent")  # Neelakantan et al.
    noise_clip: float | None = _opt(None, "float?", "cap on the relative kick; none: no cap")
    noise_trigger: str = _opt("stall", "str", "always or stall")
    stall_threshold: float = _opt(1e-3, "float", "gradient norm of a stalled step")
    stall_steps: int = _opt(10, "int", "stalled steps before a kick")
    noise_cooldown: int = _opt(50, "int", "steps without a kick after each kick")
    batch_size: int | None = _opt(None, "int?", "minibatch size; none: full batch")  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _check_batch(self.batch_size)
        if self.aggregation not in ("blend", "rms"):
            raise ValueError(f"Invalid aggregation: {self.aggregation!r}; choose blend or rms")
        self.make_optimizer([torch.zeros(1, dtype=torch.float64, requires_grad=True)],
                            torch.Generator())

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        return SynaPrune(params, lr=self.lr, base=self.base, momentum=self.momentum,
                         aggregation=self.aggregation, **_a_kwargs(self),
                         generator=generator, distributed=False,
                         num_models=_num_models(generator), **_b_kwargs(self))


def _c_fields() -> tuple[Any, Any]:
    # Seed 000 gives no values: tuned on xor (module docstring), beta 0.3 with gamma 1 (25/32 and
    # the fewest median steps; without the stabiliser, gamma 0, only 13-14/32).
    return (_opt(0.3, "float", "weight beta of the activation-gradient penalty"),
            _opt(1.0, "float", "weight gamma of the weight-norm stabiliser"))


def _check_c(method: Any) -> None:
    if not (math.isfinite(method.beta) and method.beta >= 0.0):
        raise ValueError(f"Invalid beta: {method.beta}; must be a finite value >= 0")
    if not (math.isfinite(method.gamma) and method.gamma >= 0.0):
        raise ValueError(f"Invalid gamma: {method.gamma}; must be a finite value >= 0")


@dataclass(frozen=True)
class SynaPruneC(Method):
    """``synaprune-c``: mechanism C only, the loss L + beta * (1/B) sum_i sum_l
    ||d l_i/d h_{l,i}||^2 + gamma * sum_l relu(c_l - ||W_l||_F)^2 under plain SGD (or Adam)
    (:class:`synaprune.SynaPrune` with ``aggregation=mean``, no noise)."""

    name: ClassVar[str] = "synaprune-c"
    lr: float = _opt(0.1, "float", "step size")  # as gd
    base: str = _opt("sgd", "str", "base update: sgd or adam")
    momentum: float = _opt(0.0, "float", "momentum of the sgd base")
    beta: float = _c_fields()[0]
    gamma: float = _c_fields()[1]
    batch_size: int | None = _opt(None, "int?", "minibatch size; none: full batch")  # type: ignore[assignment]

    @property
    def penalty(self) -> tuple[float, float]:
        return (self.beta, self.gamma)

    def __post_init__(self) -> None:
        _check_batch(self.batch_size)
        _check_c(self)
        self.make_optimizer([torch.zeros(1, dtype=torch.float64, requires_grad=True)])

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        return SynaPrune(params, lr=self.lr, base=self.base, momentum=self.momentum,
                         aggregation="mean", noise=0.0, seed=0, distributed=False,
                         num_models=_num_models(generator))


@dataclass(frozen=True)
class SynaPruneAC(SynaPruneA):
    """``synaprune-ac``: mechanisms A and C (options as in ``synaprune-a`` plus beta, gamma);
    A aggregates the data gradient, the penalty's gradient is added unchanged."""

    name: ClassVar[str] = "synaprune-ac"
    beta: float = _c_fields()[0]
    gamma: float = _c_fields()[1]

    @property
    def penalty(self) -> tuple[float, float]:
        return (self.beta, self.gamma)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_c(self)


@dataclass(frozen=True)
class SynaPruneBC(SynaPruneB):
    """``synaprune-bc``: mechanisms B and C (options as in ``synaprune-b`` plus beta, gamma)."""

    name: ClassVar[str] = "synaprune-bc"
    beta: float = _c_fields()[0]
    gamma: float = _c_fields()[1]

    @property
    def penalty(self) -> tuple[float, float]:
        return (self.beta, self.gamma)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_c(self)


@dataclass(frozen=True)
class SynaPruneABC(SynaPruneAB):
    """``synaprune``: all three mechanisms (options as in ``synaprune-ab`` plus beta, gamma)."""

    name: ClassVar[str] = "synaprune"
    beta: float = _c_fields()[0]
    gamma: float = _c_fields()[1]

    @property
    def penalty(self) -> tuple[float, float]:
        return (self.beta, self.gamma)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_c(self)


@dataclass(frozen=True)
class SaddleFreeNewtonMethod(Method):
    """``saddle-free-newton``: :class:`synaprune.SaddleFreeNewton` (Dauphin et al. 2014), full
    batch: step -lr V Q diag(1 / (|theta| + damping)) Q^T V^T g in a Krylov subspace of the
    Hessian started at g (k = min(krylov_dim, n) vectors, n the parameters of one model).

    Deterministic. Cost per step: one gradient with ``create_graph=True`` and k Hessian-vector
    products (each about one more backward pass); memory: the first-order graph plus k vectors
    of n numbers per seed (S * k * n numbers in the seed-batched runner), so it is meant for
    small models. No problem is refused: the registered ones have at most ~4.4k parameters
    (autoencoder), where k = 20 vectors per seed cost ~0.7 MB; the limit is wall time, k
    products a step (measured with 4 seeds: 5.5x gd's time per step on autoencoder, 11x on
    digits, 8x on spirals).

    Defaults: ``krylov_dim=20`` (on xor's 9 parameters that is the exact, full-space step);
    ``lr=1``, the full Newton step, not tuned; ``damping=0.01`` from a trial on xor, seeds
    1000-1015, budget 1000 steps, lr=1, damping {0.001, 0.01, 0.03, 0.1, 0.3, 1, 3}:
    solved 15, 16, 16, 16, 15, 0, 0 of 16 with median steps to success 14, 24, 56, 168, 471
    (the best success rate, ties broken by fewer steps; gd at its default lr=0.1 solved 0 and
    at lr=2 11 of 16). At lr=0.5 damping 0.001 to 0.1 also solved 16/16, about twice as slowly.
    Not a universal value: on ``digits`` (cross-entropy, k = 20 of 2410 parameters, seeds 0-3,
    30 steps) damping 0.01 threw the loss up to 10-80, 0.03 solved 3 of 4 and 0.1 all 4, so
    tune it per problem.
    """

    name: ClassVar[str] = "saddle-free-newton"
    loss_closure: ClassVar[bool] = True
    lr: float = _opt(1.0, "float", "step size (1: the full saddle-free Newton step)")
    damping: float = _opt(0.01, "float", "added to |theta| (Levenberg-Marquardt damping)")
    krylov_dim: int = _opt(20, "int", "Krylov subspace size k (capped at the parameter count)")

    def __post_init__(self) -> None:
        self.make_optimizer([torch.zeros(1, dtype=torch.float64, requires_grad=True)])

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        return SaddleFreeNewton(params, lr=self.lr, damping=self.damping,
                                krylov_dim=self.krylov_dim, num_models=_num_models(generator))


_METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (GradientDescent, MinibatchSGD, Momentum, Adam, SynaPruneA,
                              PerturbedGDMethod, GradientNoiseMethod, SAMMethod, SynaPruneB,
                              SynaPruneAB, SynaPruneC, SynaPruneAC, SynaPruneBC, SynaPruneABC,
                              SaddleFreeNewtonMethod)
}


def list_methods() -> list[str]:
    """Names of the available methods, sorted.

    Returns:
        e.g. ``["adam", "gd", "gradient-noise", "momentum", ...]``.
    """
    return sorted(_METHODS)


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses or brackets."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _convert(method: str, key: str, kind: str, text: str) -> Any:
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    text = text.strip()
    expected = {"int": "an integer", "float": "a number", "bool": "true or false",
                "str": "a word", "pair": "two numbers as (a,b)"}[kind]
    bad = ValueError(f"Bad value {text!r} for option '{key}' of method '{method}': "
                     f"expected {expected}{' or none' if optional else ''}")
    if optional and text.lower() == "none":
        return None
    if kind == "int":
        if not _INT.fullmatch(text):
            raise bad
        return int(text)
    if kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise bad from None
        if not math.isfinite(value):
            raise bad
        return value
    if kind == "bool":
        if text.lower() in ("true", "yes", "1"):
            return True
        if text.lower() in ("false", "no", "0"):
            return False
        raise bad
    if kind == "pair":
        inner = text[1:-1] if text[:1] in "([" and text[-1:] in ")]" else text
        items = [s for s in re.split(r"[,;]", inner) if s.strip()]
        if len(items) != 2:
            raise bad
        try:
            return tuple(float(s) for s in items)
        except ValueError:
            raise bad from None
    if not text:
        raise bad
    return text


def tuned_options(problem: str, method: str) -> dict[str, Any]:
    """Options of ``method`` tuned on ``problem`` (``docs/tuning.md``), or an empty dict.

    Args:
        problem: Problem name (``"xor"``) or spec (``"xor:hidden=2"``: only the name counts).
        method: Method name.

    Returns:
        Option values that replace the method's own defaults on that problem.
    """
    from synaprune.bench._tuned import TUNED

    name = problem.partition(":")[0].strip()
    return dict(TUNED.get(name, {}).get(method, {}))


def get_method(spec: str | Method, *, problem: str | None = None, **overrides: Any) -> Method:
    """Build a method from a spec string such as ``"adam:lr=0.01,betas=(0.9,0.99)"``.

    Args:
        spec: ``name`` or ``name:key=value,...``; a :class:`Method` is returned as is
            (with ``overrides`` applied).
        problem: A problem name or spec: options not given in ``spec`` or ``overrides`` take
            the values tuned on that problem (:func:`tuned_options`) instead of the method's
            own defaults. None: the method's own defaults.
        **overrides: Option values given directly, taking precedence over the spec.

    Returns:
        The method, with all options resolved.

    Raises:
        ValueError: One line naming the choices, for an unknown method or option, a planned
            but not yet available method, or a bad value.
    """
    if isinstance(spec, Method):
        return dataclasses.replace(spec, **overrides) if overrides else spec
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if name in PLANNED_METHODS:
        raise ValueError(f"Method '{name}' is planned but not yet available; available: "
                         f"{', '.join(list_methods())}")
    if name not in _METHODS:
        raise ValueError(f"Unknown method '{name}'; choose from: {', '.join(list_methods())}")
    cls = _METHODS[name]
    fields = cls._fields()
    values: dict[str, Any] = tuned_options(problem, name) if problem is not None else {}
    for item in _split_top(rest) if rest.strip() else []:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"Bad option {item.strip()!r} for method '{name}': expected "
                             f"key=value with key one of: {', '.join(sorted(fields))}")
        if key not in fields:
            raise ValueError(f"Unknown option '{key}' for method '{name}'; choose from: "
                             f"{', '.join(sorted(fields))}")
        values[key] = _convert(name, key, fields[key].metadata["kind"], text)
    for key in overrides:
        if key not in fields:
            raise ValueError(f"Unknown option '{key}' for method '{name}'; choose from: "
                             f"{', '.join(sorted(fields))}")
    values.update(overrides)
    return cls(**values)


def parse_method_list(text: str, *, problem: str | None = None) -> list[Method]:
    """Parse a comma-separated list of method specs, e.g. ``"gd,adam:lr=0.01,eps=1e-6"``.

    A top-level comma starts a new method unless the piece after it is a ``key=value``
    option (it has ``=`` and no ``:``), which belongs to the method before it.

    Args:
        text: The list as typed on the command line.
        problem: As for :func:`get_method`: defaults tuned on this problem.

    Returns:
        The methods in order, without exact duplicates.

    Raises:
        ValueError: As for :func:`get_method`, or for an empty list.
    """
    specs: list[str] = []
    for piece in _split_top(text):
        head = piece.split("=", 1)[0]
        if "=" in piece and ":" not in head and specs:
            specs[-1] += "," + piece
        elif piece.strip():
            specs.append(piece)
    if not specs:
        raise ValueError(f"No method given; choose from: {', '.join(list_methods())}")
    methods: list[Method] = []
    for spec in specs:
        method = get_method(spec, problem=problem)
        if method.spec not in [m.spec for m in methods]:
            methods.append(method)
    return methods
