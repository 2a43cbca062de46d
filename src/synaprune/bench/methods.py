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
* ``perturbed-gd``: :class:`synaprune.optim.PerturbedGD` (Jin et al. 2017).
* ``gradient-noise``: :class:`synaprune.optim.GradientNoise` (Neelakantan et al. 2015).
* ``sam``: :class:`synaprune.optim.SAM` (Foret et al. 2021); needs a closure.
* ``synaprune-a``, ``-b``, ``-c``, ``-ab``, ``-ac``, ``-bc`` and ``synaprune`` (all three):
  presets of one method, :class:`SynaPruneMethod`, with the mechanisms in the name switched
  on: A, aggregation ``blend`` or ``rms`` from per-example gradient statistics (needs a
  per-example problem); B, magnitude-proportional weight noise; C, the activation-gradient
  penalty (:class:`synaprune.ActivationGradientPenalty` in the plain loop,
  :class:`synaprune.bench.penalty.StackedPenalty` in the seed-batched runner; per-example
  problems, hidden modules: the problem's ``hidden_modules``). Without B the optimizer is
  deterministic.
* ``saddle-free-newton``: :class:`synaprune.SaddleFreeNewton` (Dauphin et al. 2014), full
  batch, for small models: |H|^-1 g in a Krylov subspace; needs a loss closure.
* ``gd-restarts``: R fresh initialisations of ``gd`` sharing the budget, tried in order until
  one succeeds, the best one kept (:class:`GDRestarts`, :mod:`synaprune.bench._restarts`).
* ``synaprune-escape``: ``SynaPrune(preset="escape")``, mechanism B on a schedule relative to
  the run's budget (:class:`EscapeMethod`).

``synaprune bench --list`` prints every method with its options (:func:`describe_methods`).

Noise: :meth:`Method.make_optimizer` takes ``generator``, one ``torch.Generator`` (one model)
or a sequence of S of them (stacked ``[S, ...]`` parameters, model s draws from generator s
exactly what it would draw alone; the optimizer gets ``num_models=S``, the stacked-mode
convention of :mod:`synaprune.optim`); the runner derives seed s's generator with
:func:`synaprune.bench.runner.noise_generator`.

To add a method, subclass :class:`Method`, give it a ``name`` and
option fields (each with ``metadata={"kind": ..., "help": ...}``), implement
:meth:`Method.make_optimizer` and register it in ``_METHODS``. To add an option to a SynaPrune
mechanism, add one field to :class:`SynaPruneMethod` (``_mech("b", ...)``): every preset with
that mechanism has it.

Defaults. Each class's own defaults (used when no problem is given, and by ``synaprune bench
--defaults plain``) are the paper's where it gives a usable value, otherwise a first pass on
``xor`` (seeds 1000-1031, 1000 steps; knobs tuned at lr=2 with ``lr`` left at gd's 0.1). On the
lab's problems, :func:`get_method` with ``problem=`` (and ``synaprune bench``) starts instead
from the options tuned on that problem by ``scripts/tune_methods.py``: tuning seeds 1000 and up
(no reported table uses them), the same learning-rate grid and knob grids for every method,
scored by successes, then median final loss; protocol, grids and every cell's score are in
``docs/tuning.md``.

Spec strings: ``name`` or ``name:key=value,...``, e.g. ``adam:lr=0.01,betas=(0.9,0.99)``,
read by the parser shared with the problems (:mod:`synaprune._spec`): names case-insensitive,
keys case-sensitive, a key given twice an error. Tuples are written in parentheses; ``none``
means None. :attr:`Method.spec` is the canonical spec (every option, sorted: the key of stored
runs); :attr:`Method.label` the short name tables and figures show.

Example:
    >>> from synaprune.bench import get_method
    >>> method = get_method("adam:lr=0.01")
    >>> method.spec
    'adam:batch_size=none,betas=(0.9,0.999),eps=1e-08,lr=0.01'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from synaprune._spec import normalize_name, parse_spec, parse_value, split_top
from synaprune.optim import SAM, GradientNoise, PerturbedGD, SaddleFreeNewton, SynaPrune

__all__ = [
    "PLANNED_METHODS",
    "Adam",
    "EscapeMethod",
    "GDRestarts",
    "GradientDescent",
    "GradientNoiseMethod",
    "Method",
    "MinibatchSGD",
    "Momentum",
    "PerturbedGDMethod",
    "SAMMethod",
    "SaddleFreeNewtonMethod",
    "SynaPruneMethod",
    "describe_methods",
    "get_method",
    "list_methods",
    "method_label",
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

def _opt(default: Any, kind: str, help: str) -> Any:
    """A dataclass field carrying its option kind (``int``, ``float``, ``bool``, ``str``,
    ``pair``; ``?`` suffix: may be None) and a one-line help."""
    return field(default=default, metadata={"kind": kind, "help": help})


@dataclass(frozen=True)
class Method:
    """Base class of the registered methods.

    Attributes:
        name: Registry name (a class attribute; a property of :class:`SynaPruneMethod`).
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
        for name in self._spec_fields():
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def spec(self) -> str:
        """Canonical spec, ``name:key=value,...`` with every option, sorted by key."""
        parts = [f"{k}={_format(getattr(self, k))}" for k in sorted(self._spec_fields())]
        return f"{self.name}:{','.join(parts)}" if parts else self.name

    @property
    def label(self) -> str:
        """Short name for tables and figures: the name, then the options whose values differ
        from the method's own defaults, sorted by key, e.g. ``"synaprune-a lr=0.5"``.

        Two different methods never share a label (the defaults are fixed, so the options
        shown determine the rest); :attr:`spec` remains the key of stored runs.
        """
        plain = get_method(self.name)
        changed = [f"{k}={_format(getattr(self, k))}" for k in sorted(self._option_fields())
                   if getattr(self, k) != getattr(plain, k)]
        return " ".join([self.name, *changed])

    @classmethod
    def _fields_of(cls) -> dict[str, dataclasses.Field]:
        """The option fields of the method's registered form (every field, here)."""
        return {f.name: f for f in dataclasses.fields(cls)}

    def _option_fields(self) -> dict[str, dataclasses.Field]:
        """The option fields of this method, by name."""
        return self._fields_of()

    def _spec_fields(self) -> dict[str, dataclasses.Field]:
        """The options :attr:`spec` and :attr:`options` list: every option, except one added
        after runs were stored (``metadata["added"]``) while it is at its default, so that a
        stored spec keeps naming the run it names (``tests/bench/data``)."""
        return {k: f for k, f in self._option_fields().items()
                if not (f.metadata.get("added") and getattr(self, k) == f.default)}

    @property
    def guard_loss(self) -> bool:
        """Whether ``step`` takes ``guard=fn``, fn returning the loss at the current parameters
        (forward only, same batch; in the seed-batched runner the [S] losses, one per seed):
        SynaPrune's ``noise_guard``."""
        return False

    def for_budget(self, steps: int) -> Method:
        """This method for a run of ``steps`` steps: options relative to the budget that were
        left unset (``total_steps=none``) take it. Most methods do not depend on it."""
        return self

    def settled_from(self, steps: int) -> int:
        """First step of a ``steps``-step run from which a rising loss means instability (the
        window of the ``unstable`` kind): the second half of the budget, or later for a
        method whose noise schedule is still kicking then (its rises are the noise's)."""
        return steps // 2

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


def _mech(mechanism: str, default: Any, kind: str, help: str, *, added: bool = False) -> Any:
    """An option of SynaPrune mechanism ``mechanism`` (``"a"``, ``"b"`` or ``"c"``): only the
    presets that use that mechanism have it. ``added``: added after runs were stored, so the
    spec lists it only when it differs from its default (:meth:`Method._spec_fields`)."""
    meta = {"kind": kind, "help": help, "mechanism": mechanism}
    return field(default=default, metadata={**meta, "added": True} if added else meta)


# Options that mean something only with another option's value: (option, values).
_ONLY_WITH: dict[str, tuple[str, tuple[str, ...]]] = {
    "blend": ("aggregation", ("blend",)),
    "noise_gamma": ("noise_schedule", ("anneal",)),
    "noise_decay": ("noise_schedule", ("exponential",)),
    "noise_steps": ("noise_schedule", ("linear", "cosine")),
    "stall_threshold": ("noise_trigger", ("stall",)),
    "stall_steps": ("noise_trigger", ("stall",)),
    "noise_cooldown": ("noise_trigger", ("stall",)),
}

# The presets, by the mechanisms they switch on; "abc" is registered as plain "synaprune".
_SYNAPRUNE_PRESETS = ("a", "b", "ab", "c", "ac", "bc", "abc")


def _preset_name(mechanisms: str) -> str:
    return "synaprune" if mechanisms == "abc" else f"synaprune-{mechanisms}"


def _check_c(method: Any) -> None:
    if not (math.isfinite(method.beta) and method.beta >= 0.0):
        raise ValueError(f"Invalid beta: {method.beta}; must be a finite value >= 0")
    if not (math.isfinite(method.gamma) and method.gamma >= 0.0):
        raise ValueError(f"Invalid gamma: {method.gamma}; must be a finite value >= 0")


@dataclass(frozen=True)
class SynaPruneMethod(Method):
    """SynaPrune with some of its mechanisms: the presets ``synaprune-a``, ``-b``, ``-ab``,
    ``-c``, ``-ac``, ``-bc`` and ``synaprune`` (all three) are this one method.

    * A: :class:`synaprune.SynaPrune`'s aggregation, ``aggregation="blend"`` (d = gbar +
      blend * sign(gbar) * (r - |gbar|)) or ``"rms"`` (blend = 1), from per-example gradient
      statistics; needs a per-example problem. Without A: ``aggregation="mean"``.
    * B: magnitude-proportional weight noise after the step, theta <- theta + sigma_t *
      (|theta| + eps0) * xi, every step (``noise_trigger=always``) or after a stall; model s
      draws from generator s. Without B: ``noise=0`` and a fixed seed, so the optimizer never
      draws from torch's global random state.
    * C: the activation-gradient penalty, the loss L + beta * (1/B) sum_i sum_l
      ||d l_i/d h_{l,i}||^2 + gamma * sum_l relu(c_l - ||W_l||_F)^2 (the runner adds it:
      :class:`synaprune.ActivationGradientPenalty` in the plain loop,
      :class:`synaprune.bench.penalty.StackedPenalty` seed-batched); A aggregates the data
      gradient, the penalty's gradient is added unchanged.

    A preset has the common options (``lr``, ``base``, ``momentum``, ``batch_size``) and those
    of its mechanisms (a field's ``metadata["mechanism"]``), so a new option of a mechanism is
    one field here; its spec and ``options`` list exactly those, as before the presets were
    one class, so stored specs still name the same method. Giving an option of a mechanism
    the preset does not use is an error.

    Defaults, tuned on xor (module docstring) unless said: ``noise=0.01`` and the stall
    trigger with threshold 1e-3 are the tied-best there (no setting beat gd);
    ``stall_steps`` and ``noise_cooldown`` are SynaPrune's own (stall rule of Jin et al.
    2017); ``noise_gamma`` is Neelakantan et al.'s; beta 0.3 with gamma 1 gave 25/32 and the
    fewest median steps (without the stabiliser, gamma 0, only 13-14/32).
    """

    # Which mechanisms are on: one of _SYNAPRUNE_PRESETS. Not an option (no "kind"): it is
    # the preset, named by the method's name.
    mechanisms: str = field(default="abc", metadata={"help": "mechanisms on: a, b, c, ab, ..."})
    lr: float = _opt(0.1, "float", "step size")  # as gd
    base: str = _opt("sgd", "str", "base update: sgd or adam")
    momentum: float = _opt(0.0, "float", "momentum of the sgd base")
    aggregation: str = _mech("a", "blend", "str", "blend or rms")
    blend: float = _mech("a", 0.5, "float", "lam in [0, 1] for blend")
    blend_schedule: str = _mech("a", "constant", "str", "constant, linear or cosine decay of lam")
    blend_steps: int | None = _mech("a", None, "int?", "length of the lam decay")
    noise: float = _mech("b", 0.01, "float", "relative noise scale sigma_0")
    noise_schedule: str = _mech("b", "constant", "str",
                                "constant, exponential, anneal, linear or cosine")
    noise_gamma: float = _mech("b", 0.55, "float", "anneal exponent")
    noise_clip: float | None = _mech("b", None, "float?", "cap on the relative kick; none: no cap")
    # --- mechanism-B options added for issue 9 (helper noiseB) -------------------------------
    noise_decay: float = _mech("b", 0.999, "float", "factor per step of the exponential schedule",
                               added=True)
    noise_eps: float = _mech("b", 1e-8, "float", "eps0: zero weights still move", added=True)
    noise_steps: int | None = _mech("b", None, "int?",
                                    "steps over which linear/cosine decay sigma to 0",
                                    added=True)
    noise_shape: str = _mech("b", "magnitude", "str",
                             "magnitude (|theta|+eps0) or isotropic (rms per tensor)", added=True)
    noise_guard: float | None = _mech("b", None, "float?",
                                      "undo a kick raising the loss past (1+r)x; none: off",
                                      added=True)
    # ------------------------------------------------------------------------------------------
    noise_trigger: str = _mech("b", "stall", "str", "always or stall")
    stall_threshold: float = _mech("b", 1e-3, "float", "gradient norm of a stalled step")
    stall_steps: int = _mech("b", 10, "int", "stalled steps before a kick")
    noise_cooldown: int = _mech("b", 50, "int", "steps without a kick after each kick")
    beta: float = _mech("c", 0.3, "float", "weight beta of the activation-gradient penalty")
    gamma: float = _mech("c", 1.0, "float", "weight gamma of the weight-norm stabiliser")
    batch_size: int | None = _opt(None, "int?", "minibatch size; none: full batch")  # type: ignore[assignment]

    @property
    def name(self) -> str:  # type: ignore[override]
        """``synaprune-<mechanisms>``, or ``synaprune`` with all three."""
        return _preset_name(self.mechanisms)

    @property
    def per_example_stats(self) -> bool:  # type: ignore[override]
        """Mechanism A reads per-example gradient statistics."""
        return "a" in self.mechanisms

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        """Mechanism B draws noise."""
        return "b" in self.mechanisms

    @property
    def penalty(self) -> tuple[float, float] | None:
        """``(beta, gamma)`` with mechanism C, else None."""
        return (self.beta, self.gamma) if "c" in self.mechanisms else None

    @property
    def guard_loss(self) -> bool:  # type: ignore[override]
        """Mechanism B's loss guard is on."""
        return "b" in self.mechanisms and self.noise_guard is not None

    def settled_from(self, steps: int) -> int:
        if "b" in self.mechanisms and self.noise > 0 and self.noise_steps is not None \
                and self.noise_schedule in ("linear", "cosine"):
            return max(steps // 2, self.noise_steps)  # sigma_t = 0 from noise_steps on
        return steps // 2

    @classmethod
    def _fields_of(cls, mechanisms: str = "abc") -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls) if "kind" in f.metadata
                and f.metadata.get("mechanism") in (None, *mechanisms)}

    def _option_fields(self) -> dict[str, dataclasses.Field]:
        return self._fields_of(self.mechanisms)

    def __post_init__(self) -> None:
        if self.mechanisms not in _SYNAPRUNE_PRESETS:
            raise ValueError(f"Invalid mechanisms: {self.mechanisms!r}; choose from: "
                             f"{', '.join(_SYNAPRUNE_PRESETS)}")
        for f in dataclasses.fields(self):
            mechanism = f.metadata.get("mechanism")
            if mechanism is not None and mechanism not in self.mechanisms \
                    and getattr(self, f.name) != f.default:
                with_it = "".join(m for m in "abc" if m in self.mechanisms + mechanism)
                raise ValueError(f"Option '{f.name}' is mechanism {mechanism.upper()}'s, which "
                                 f"{self.name} does not use; use {_preset_name(with_it)}")
        _check_batch(self.batch_size)
        if "a" in self.mechanisms and self.aggregation not in ("blend", "rms"):
            raise ValueError(f"Invalid aggregation: {self.aggregation!r}; choose blend or rms")
        if "c" in self.mechanisms:
            _check_c(self)
        self.make_optimizer([torch.zeros(1, dtype=torch.float64, requires_grad=True)],
                            torch.Generator())

    def _kwargs(self, mechanism: str) -> dict[str, Any]:
        """The options of one mechanism, by name (SynaPrune's keyword for A and B).

        An option left at its default is not passed where the other settings make it
        meaningless (SynaPrune refuses options without effect); one the user set is always
        passed, so that SynaPrune refuses a contradiction such as ``aggregation=rms,blend=0.3``.
        """
        out = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("mechanism") != mechanism:
                continue
            value = getattr(self, f.name)
            needs = _ONLY_WITH.get(f.name)
            if value == f.default and (f.metadata.get("added") or (
                    needs is not None and getattr(self, needs[0]) not in needs[1])):
                continue  # SynaPrune's own default is the same value
            out[f.name] = value
        return out

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        kwargs: dict[str, Any] = dict(lr=self.lr, base=self.base, momentum=self.momentum)
        kwargs.update(self._kwargs("a") if "a" in self.mechanisms else {"aggregation": "mean"})
        if "b" in self.mechanisms:
            kwargs.update(generator=generator, **self._kwargs("b"))
        else:
            kwargs.update(noise=0.0, seed=0)
        return SynaPrune(params, distributed=False, num_models=_num_models(generator),
                         **kwargs)  # C: the runner's penalty


# --- the escape preset (issue 9, helper noiseB) ----------------------------------------------

@dataclass(frozen=True)
class EscapeMethod(Method):
    """``synaprune-escape``: ``SynaPrune(params, lr=lr, preset="escape",
    total_steps=total_steps)`` (:mod:`synaprune.optim.presets`): plain (S)GD plus mechanism B
    on every step, sigma decaying linearly to 0 over the first part of the budget.

    ``total_steps=none`` (the default) is the run's budget (``synaprune bench --steps``):
    :meth:`for_budget` fills it in, and the stored key (spec, budget) names the run. Defaults:
    ``lr`` as ``gd``; the preset's own values were calibrated on held-out seeds
    (``docs/tuning.md``, "The escape preset").
    """

    name: ClassVar[str] = "synaprune-escape"
    stochastic: ClassVar[bool] = True
    lr: float = _opt(0.1, "float", "step size")  # as gd
    total_steps: int | None = _opt(None, "int?",
                                   "budget the schedule is relative to; none: the run's")

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        if self.total_steps is not None:
            self.make_optimizer([torch.zeros(1, dtype=torch.float64, requires_grad=True)],
                                torch.Generator())

    @property
    def guard_loss(self) -> bool:  # type: ignore[override]
        from synaprune.optim.presets import ESCAPE

        return ESCAPE.get("noise_guard") is not None

    def for_budget(self, steps: int) -> Method:
        return self if self.total_steps is not None else dataclasses.replace(
            self, total_steps=max(1, steps))

    def settled_from(self, steps: int) -> int:
        from synaprune.optim.presets import preset_options

        total = self.total_steps if self.total_steps is not None else max(1, steps)
        noise_steps = preset_options("escape", total, {})["noise_steps"]
        return max(steps // 2, noise_steps)

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        if self.total_steps is None:
            raise ValueError("synaprune-escape needs total_steps (the training budget): give "
                             "it, or let the runner set it (for_budget)")
        return SynaPrune(params, lr=self.lr, preset="escape", total_steps=self.total_steps,
                         generator=generator, num_models=_num_models(generator),
                         distributed=False)


def describe_methods() -> str:
    """Every method with its options, defaults and help: what ``synaprune bench --list``
    prints. Defaults are the method's own (``--defaults plain``); ``bench`` starts from the
    values tuned per problem where there are some (``docs/tuning.md``)."""
    lines = []
    for name in list_methods():
        cls, preset = _METHODS[name]
        plain = get_method(name)
        lines.append(name)
        for key, f in sorted(cls._fields_of(**preset).items()):
            lines.append(f"  {key}={_format(getattr(plain, key))}  "
                         f"({f.metadata['kind']}) {f.metadata['help']}")
    return "\n".join(lines)

# ----------------------------------------------------------------------------------------------


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


# --- gd-restarts (issue 9, section 3) --------------------------------------------------------
@dataclass(frozen=True)
class GDRestarts(Method):
    """``gd-restarts``: R fresh initialisations of ``gd:lr=lr`` sharing the run's budget
    (each gets ``budget // R`` steps), tried in order until one succeeds; the best one kept.

    A protocol rather than an optimizer: the runners (:func:`synaprune.bench.run_seeds`,
    :func:`synaprune.bench.run_single`) train restart r of seed s from
    ``build_model(s + r * 2**24)`` (seeds below 2**24; restart 0 is the ``gd`` run of seed s)
    and combine the restarts; seeds, budgets, the choice of the kept run and the stored curve
    are defined in :mod:`synaprune.bench._restarts`.

    Defaults: ``lr`` as ``gd``, and on a problem gd's tuned step (:func:`tuned_options`);
    ``restarts=4`` is not tuned (a first choice: four tries at a quarter of the budget each);
    give both explicitly in a study.
    """

    name: ClassVar[str] = "gd-restarts"
    lr: float = _opt(0.1, "float", "step size of every restart (as gd)")
    restarts: int = _opt(4, "int", "initialisations R sharing the budget (budget // R steps each)")

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        if not 1 <= self.restarts <= 256:  # restart seeds stay below 2**32 (bench._restarts)
            raise ValueError(f"Invalid restarts: {self.restarts}; must be in [1, 256]")

    @property
    def base(self) -> Method:
        """The method of each restart, ``gd:lr=lr``."""
        return GradientDescent(lr=self.lr)

    def make_optimizer(self, params: Iterable[Tensor], generator: Generators = None) -> Optimizer:
        # One optimizer cannot restart from fresh initialisations; stepping a model with plain
        # SGD here would silently be gd, not gd-restarts.
        raise TypeError("gd-restarts is a protocol of R runs, not an optimizer: train it with "
                        "synaprune.bench.run_seeds or run_single (or use method.base)")


# Each restart is a gd run: without its own tuning, gd-restarts takes gd's tuned step, so that
# "gd against gd-restarts" on a problem compares the restarts, not two step sizes.
_TUNED_AS: dict[str, tuple[str, tuple[str, ...]]] = {"gd-restarts": ("gd", ("lr",))}
# --- end gd-restarts -------------------------------------------------------------------------


# name -> (class, preset): the SynaPrune presets are one class with its mechanisms chosen.
_METHODS: dict[str, tuple[type[Method], dict[str, Any]]] = {
    **{cls.name: (cls, {}) for cls in (GradientDescent, MinibatchSGD, Momentum, Adam,
                                       PerturbedGDMethod, GradientNoiseMethod, SAMMethod,
                                       SaddleFreeNewtonMethod, GDRestarts)},
    EscapeMethod.name: (EscapeMethod, {}),  # noiseB
    **{_preset_name(m): (SynaPruneMethod, {"mechanisms": m}) for m in _SYNAPRUNE_PRESETS},
}


def list_methods() -> list[str]:
    """Names of the available methods, sorted.

    Returns:
        e.g. ``["adam", "gd", "gradient-noise", "momentum", ...]``.
    """
    return sorted(_METHODS)


def method_label(spec: str) -> str:
    """:attr:`Method.label` of a stored spec: the name and the options that differ from the
    method's own defaults; the spec itself if it no longer parses (a method or option since
    removed), so that no stored run goes unnamed.

    Example:
        >>> method_label("adam:batch_size=none,betas=(0.9,0.999),eps=1e-08,lr=0.03")
        'adam lr=0.03'
    """
    try:
        return get_method(spec).label
    except ValueError:
        return spec


def tuned_options(problem: str, method: str) -> dict[str, Any]:
    """Options of ``method`` tuned on ``problem`` (``docs/tuning.md``), or an empty dict.

    Args:
        problem: Problem name (``"xor"``) or spec (``"xor:hidden=2"``: only the name counts).
        method: Method name.

    Returns:
        Option values that replace the method's own defaults on that problem.
    """
    from synaprune.bench._tuned import TUNED

    name = normalize_name(problem.partition(":")[0])
    method = normalize_name(method)
    tuned = TUNED.get(name, {})
    if method not in tuned and method in _TUNED_AS:  # e.g. gd-restarts: gd's step
        base, keys = _TUNED_AS[method]
        return {k: v for k, v in tuned.get(base, {}).items() if k in keys}
    return dict(tuned.get(method, {}))


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
    name, raw = parse_spec(spec, "method")
    if name in PLANNED_METHODS:
        raise ValueError(f"Method '{name}' is planned but not yet available; available: "
                         f"{', '.join(list_methods())}")
    if name not in _METHODS:
        raise ValueError(f"Unknown method '{name}'; choose from: {', '.join(list_methods())}")
    cls, preset = _METHODS[name]
    fields = cls._fields_of(**preset)
    for key in [*raw, *overrides]:
        if key not in fields:
            raise ValueError(f"Unknown option '{key}' for method '{name}'; choose from: "
                             f"{', '.join(sorted(fields))}{_other_preset_hint(name, key)}")
    values: dict[str, Any] = tuned_options(problem, name) if problem is not None else {}
    for key, text in raw.items():
        values[key] = parse_value(text, fields[key].metadata["kind"], key=key,
                                  owner=f"method '{name}'")
    values.update(overrides)
    return cls(**preset, **values)


def _other_preset_hint(name: str, key: str) -> str:
    """For an option of a SynaPrune mechanism that preset ``name`` lacks: which has it."""
    field_ = SynaPruneMethod._fields_of().get(key)
    if _METHODS[name][0] is not SynaPruneMethod or field_ is None:
        return ""
    mechanisms = _METHODS[name][1]["mechanisms"] + field_.metadata["mechanism"]
    with_it = _preset_name("".join(m for m in "abc" if m in mechanisms))
    return f" ('{key}' is mechanism {field_.metadata['mechanism'].upper()}'s: use {with_it})"


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
    for piece in split_top(text):
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
