"""The SynaPrune optimizer: a thin ``torch.optim.Optimizer`` adapter over the functional core.

One step is a chain, in this order (DESIGN.md, "The SynaPrune mechanisms, made precise"):

1. aggregate (mechanism A): per-example statistics -> one direction d per parameter;
2. base update: SGD (momentum, Nesterov, weight decay) or Adam, driven by d;
3. weight noise (mechanism B): a magnitude-proportional kick, every step or after a stall.

Mechanism C (the activation-gradient penalty) changes the loss, not the step, so it lives in
:class:`synaprune.ActivationGradientPenalty`; the optimizer only keeps its gradient apart from the
data gradient when aggregating.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from synaprune.optim._stacked import check_stacked, resolve_generators
from synaprune.optim.aggregation import AGGREGATIONS, aggregate
from synaprune.optim.base import adam_update, sgd_update
from synaprune.optim.noise import (
    NOISE_SHAPES,
    NOISE_TRIGGERS,
    StallTrigger,
    add_weight_noise,
    guard_rejects,
)
from synaprune.optim.presets import preset_options
from synaprune.optim.schedules import (
    BLEND_SCHEDULES,
    DECAY_TO_ZERO,
    NOISE_SCHEDULES,
    blend_weight,
    noise_scale,
)
from synaprune.probes import _fields as fields

BASES = ("sgd", "adam", "adamw")

# The effective values of options left unset (None); weight_decay and blend depend on other
# options (see SynaPrune.add_param_group). An option is None by default exactly when it only has
# an effect under another option's value, so that setting it without that value can be refused.
_DEFAULTS: dict[str, Any] = dict(
    betas=(0.9, 0.999), eps=1e-8, noise_decay=0.999, noise_gamma=0.55, noise_eps=1e-8,
    stall_threshold=1e-3, stall_steps=10, noise_cooldown=50,
)


def _check_consistent(options: dict[str, Any]) -> None:
    """Raise ValueError when an option is set that the other options make ineffective.

    "Set" means not None for the options that default to None, and a value that does something
    (momentum > 0, nesterov, amsgrad, a schedule other than constant...) for the others.
    """
    def refuse(what: str, why: str, fix: str) -> None:
        raise ValueError(f"Contradictory options: {what} {why}; {fix}")

    base, agg = options.get("base", "sgd"), options.get("aggregation", "mean")
    if base == "sgd":
        unused = [k for k in ("betas", "eps") if options.get(k) is not None]
        unused += ["amsgrad"] if options.get("amsgrad") else []
        if unused:
            refuse(", ".join(unused), "only act on base='adam' or 'adamw', not base='sgd'",
                   "choose base='adam'/'adamw' or drop them")
    else:
        unused = [k for k in ("momentum", "dampening") if options.get(k)]
        unused += ["nesterov"] if options.get("nesterov") else []
        if unused:
            refuse(", ".join(unused), f"only act on base='sgd', not base={base!r}",
                   "choose base='sgd' or drop them (Adam's momentum is betas[0])")
    blend = options.get("blend")
    if blend is not None and agg != "blend":
        refuse(f"blend={blend} with aggregation={agg!r}",
               "has no effect (" + ("'rms' is blend=1" if agg == "rms" else "'mean' is blend=0")
               + ")", f"use aggregation='blend', blend={blend}, or drop blend")
    if agg == "mean" and (options.get("blend_schedule", "constant") != "constant"
                          or options.get("blend_steps") is not None):
        refuse("blend_schedule/blend_steps with aggregation='mean'",
               "have no effect (they decay the weight of 'rms' or 'blend')",
               "choose aggregation='rms' or 'blend', or drop them")
    if (options.get("blend_schedule", "constant") == "constant"
            and options.get("blend_steps") is not None):
        refuse(f"blend_steps={options['blend_steps']} with blend_schedule='constant'",
               "has no effect", "choose blend_schedule='linear' or 'cosine', or drop blend_steps")
    noise_options = [k for k in ("noise_decay", "noise_gamma", "noise_eps", "noise_clip",
                                 "noise_steps", "noise_guard", "stall_threshold",
                                 "stall_steps", "noise_cooldown")
                     if options.get(k) is not None]
    noise_options += [k for k, off in (("noise_schedule", "constant"),
                                       ("noise_trigger", "always"),
                                       ("noise_shape", "magnitude"))
                      if options.get(k, off) != off]
    if not options.get("noise", 0.0) and noise_options:
        refuse(", ".join(sorted(noise_options)) + " with noise=0",
               "have no effect (noise=0 turns weight noise off)",
               "set noise > 0 or drop them")
    schedule = options.get("noise_schedule", "constant")
    for name, needs in (("noise_decay", "exponential"), ("noise_gamma", "anneal")):
        if options.get(name) is not None and schedule != needs:
            refuse(f"{name} with noise_schedule={schedule!r}", "has no effect",
                   f"choose noise_schedule={needs!r} or drop {name}")
    if options.get("noise_steps") is not None and schedule not in DECAY_TO_ZERO:
        refuse(f"noise_steps with noise_schedule={schedule!r}", "has no effect",
               "choose noise_schedule='linear' or 'cosine', or drop noise_steps")
    if schedule in DECAY_TO_ZERO and options.get("noise", 0.0) and \
            options.get("noise_steps") is None:
        raise ValueError(f"Invalid noise_steps: None; a {schedule!r} noise_schedule needs "
                         "noise_steps >= 1 (the steps over which sigma decays to 0)")
    stall = [k for k in ("stall_threshold", "stall_steps", "noise_cooldown")
             if options.get(k) is not None]
    if stall and options.get("noise_trigger", "always") != "stall":
        refuse(", ".join(stall) + " with noise_trigger='always'", "have no effect",
               "choose noise_trigger='stall' or drop them")


class SynaPrune(Optimizer):
    r"""SGD, Adam or AdamW driven by SynaPrune's aggregated direction, with optional weight noise.

    With ``aggregation="mean"`` and ``noise=0`` it is ``torch.optim.SGD`` (``base="sgd"``),
    ``torch.optim.Adam`` (``base="adam"``) or ``torch.optim.AdamW`` (``base="adamw"``), bit for
    bit on the CPU.

    ``aggregation="rms"`` or ``"blend"`` needs per-example statistics: attach
    :class:`synaprune.PerExampleGradStats` to the model before the forward pass. They follow
    ``.grad``: a rescaling of ``.grad`` between backward and step (``clip_grad_norm_``,
    ``torch.amp.GradScaler`` with ``scaler.step(opt)``, a manual multiplication) scales the
    aggregated direction alike; any other change of ``.grad`` (weight decay added into it: use
    ``weight_decay`` here) raises RuntimeError at the step. Momentum follows torch's convention
    (v <- mu v + (1 - dampening) d; p <- p - lr v), not Sutskever's.

    Options that another option makes ineffective are refused (ValueError naming both), not
    ignored: e.g. ``blend`` unless ``aggregation="blend"``, ``blend_schedule``/``blend_steps``
    with ``aggregation="mean"``, any noise option with ``noise=0``, ``noise_decay`` unless
    ``noise_schedule="exponential"``, ``noise_gamma`` unless ``"anneal"``, the stall options
    unless ``noise_trigger="stall"``, ``momentum``/``dampening``/``nesterov`` with an Adam base,
    ``betas``/``eps``/``amsgrad`` with SGD. That is why those options default to None (unset);
    the value used when unset is given below in brackets.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate (> 0 is not required: 0 is allowed; negative is not).
        base: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        momentum, dampening, nesterov: as in ``torch.optim.SGD`` (base ``"sgd"`` only).
        weight_decay: as in torch: L2 in the gradient for ``"sgd"`` and ``"adam"`` [0];
            decoupled, p <- p * (1 - lr * weight_decay), for ``"adamw"`` [1e-2, torch's].
        betas, eps, amsgrad: as in ``torch.optim.Adam`` [(0.9, 0.999), 1e-8, False].
        aggregation: ``"mean"`` (d = gbar), ``"rms"`` (d = sign(gbar) * r) or ``"blend"``
            (d = gbar + lam * sign(gbar) * (r - |gbar|)).
        blend: lam in [0, 1] for ``"blend"`` [1] (``"rms"`` is lam = 1, ``"mean"`` lam = 0).
        blend_schedule: ``"constant"``, ``"linear"`` or ``"cosine"`` decay of lam to 0 (back to
            ``mean``) over ``blend_steps`` steps; applies to ``"rms"`` and ``"blend"``.
        blend_steps: length of the decay (needed by ``"linear"`` and ``"cosine"``).
        noise: sigma_0, the relative weight-noise scale; 0 turns mechanism B off.
        noise_schedule: ``"constant"``, ``"exponential"`` (sigma_0 * noise_decay**t),
            ``"anneal"`` (variance sigma_0**2 / (1 + t)**noise_gamma), or ``"linear"`` /
            ``"cosine"``: sigma_0 decayed to 0 over ``noise_steps`` steps, 0 from then on (no
            noise is drawn once sigma_t is 0).
        noise_decay, noise_gamma: parameters of those schedules [0.999, 0.55].
        noise_steps: T of the linear and cosine schedules (required by them).
        noise_eps: eps0, so that zero weights still move [1e-8].
        noise_clip: cap on the relative kick |sigma_t * xi| per coordinate (a guard against
            multiplicative blow-up); None for no cap.
        noise_shape: ``"magnitude"`` (the kick sigma_t * (|theta| + eps0) * xi) or
            ``"isotropic"`` (the ablation: sigma_t * rms * xi, one rms =
            sqrt(mean (|theta| + eps0)**2) per parameter tensor and model, the same expected
            energy per tensor).
        noise_guard: r > 0 turns on the loss guard: a model's kick is undone (its parameters
            go back to where the update put them) when its loss after the kick is not finite
            or above (1 + r) times its loss before the kick. It needs ``step(guard=fn)``, fn
            returning the loss at the current parameters (see :meth:`step`); each kicked step
            then costs two extra loss evaluations. None: no guard.
        noise_trigger: ``"always"`` or ``"stall"``: kick only after the gradient norm stayed below
            ``stall_threshold`` [1e-3] for ``stall_steps`` [10] steps, then wait
            ``noise_cooldown`` [50] steps.
        preset: ``"escape"`` sets mechanism B for a budget of ``total_steps`` steps
            (:mod:`synaprune.optim.presets`): noise on every step, sigma_0 decaying linearly
            to 0 over the first part of the budget (values: ``presets.ESCAPE``). No other
            mechanism-B option may be given with it. None: no preset.
        total_steps: the training budget in optimizer steps, for ``preset``.
        generator: ``torch.Generator`` for the noise (in stacked mode, a sequence of
            ``num_models`` of them); or give ``seed`` (model s of a stack gets ``seed + s``).
            Without either, seeds are drawn from torch's global generator, so
            ``torch.manual_seed`` makes runs repeatable.
        num_models: stacked mode, S independent models at once (the lab's seed batching): every
            parameter is [S, ...]; gradient norms and stall triggers are per model. The
            convention shared by every optimizer of :mod:`synaprune.optim` is in
            ``synaprune/optim/_stacked.py``. None: one model.
        distributed: sum per-example statistics over ``torch.distributed`` ranks before
            aggregating. ``None`` means: when a process group is initialised. Gradients
            themselves are expected to be averaged already (as DistributedDataParallel does),
            with a mean-reduced loss and equal batches on every rank.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
        ...                             torch.nn.Linear(8, 1))
        >>> stats = PerExampleGradStats(model, reduction="mean")
        >>> opt = SynaPrune(model.parameters(), lr=0.1, momentum=0.9, aggregation="blend",
        ...                 blend=0.5, noise=1e-3, noise_trigger="stall")
        >>> x, y = torch.randn(32, 4), torch.randn(32, 1)
        >>> opt.zero_grad()
        >>> loss = torch.nn.functional.mse_loss(model(x), y)
        >>> loss.backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        *,
        base: str = "sgd",
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float | None = None,
        betas: tuple[float, float] | None = None,
        eps: float | None = None,
        amsgrad: bool = False,
        aggregation: str = "mean",
        blend: float | None = None,
        blend_schedule: str = "constant",
        blend_steps: int | None = None,
        noise: float = 0.0,
        noise_schedule: str = "constant",
        noise_decay: float | None = None,
        noise_gamma: float | None = None,
        noise_eps: float | None = None,
        noise_clip: float | None = None,
        noise_steps: int | None = None,
        noise_shape: str = "magnitude",
        noise_guard: float | None = None,
        noise_trigger: str = "always",
        stall_threshold: float | None = None,
        stall_steps: int | None = None,
        noise_cooldown: int | None = None,
        preset: str | None = None,
        total_steps: int | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        seed: int | None = None,
        num_models: int | None = None,
        distributed: bool | None = None,
    ) -> None:
        if preset is not None or total_steps is not None:
            b = preset_options(preset, total_steps, dict(
                noise=noise, noise_schedule=noise_schedule, noise_decay=noise_decay,
                noise_gamma=noise_gamma, noise_eps=noise_eps, noise_clip=noise_clip,
                noise_steps=noise_steps, noise_shape=noise_shape, noise_guard=noise_guard,
                noise_trigger=noise_trigger, stall_threshold=stall_threshold,
                stall_steps=stall_steps, noise_cooldown=noise_cooldown))
            noise, noise_schedule, noise_steps = b["noise"], b["noise_schedule"], b["noise_steps"]
            noise_trigger, noise_clip = b["noise_trigger"], b["noise_clip"]
            noise_guard = b.get("noise_guard")
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if base not in BASES:
            raise ValueError(f"Invalid base: {base!r}; expected one of {BASES}")
        if not momentum >= 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Invalid nesterov: requires momentum > 0 and zero dampening")
        if weight_decay is not None and not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if betas is not None:
            if not 0.0 <= betas[0] < 1.0:
                raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
            if not 0.0 <= betas[1] < 1.0:
                raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if eps is not None and not eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"Invalid aggregation: {aggregation!r}; expected one of "
                             f"{AGGREGATIONS}")
        if blend is not None and not 0.0 <= blend <= 1.0:
            raise ValueError(f"Invalid blend: {blend}; must be in [0, 1]")
        if blend_schedule not in BLEND_SCHEDULES:
            raise ValueError(f"Invalid blend_schedule: {blend_schedule!r}; expected one of "
                             f"{BLEND_SCHEDULES}")
        if blend_schedule != "constant" and (blend_steps is None or blend_steps < 1):
            raise ValueError(f"Invalid blend_steps: {blend_steps}; a {blend_schedule!r} "
                             "schedule needs blend_steps >= 1")
        if not (noise >= 0.0 and math.isfinite(noise)):
            raise ValueError(f"Invalid noise: {noise}; must be a finite value >= 0")
        if noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"Invalid noise_schedule: {noise_schedule!r}; expected one of "
                             f"{NOISE_SCHEDULES}")
        if noise_decay is not None and not 0.0 < noise_decay <= 1.0:
            raise ValueError(f"Invalid noise_decay: {noise_decay}; must be in (0, 1]")
        if noise_gamma is not None and not noise_gamma >= 0.0:
            raise ValueError(f"Invalid noise_gamma: {noise_gamma}; must be >= 0")
        if noise_eps is not None and not noise_eps >= 0.0:
            raise ValueError(f"Invalid noise_eps: {noise_eps}; must be >= 0")
        if noise_clip is not None and not noise_clip > 0.0:
            raise ValueError(f"Invalid noise_clip: {noise_clip}; must be > 0 or None")
        if noise_steps is not None and (isinstance(noise_steps, bool)
                                        or not isinstance(noise_steps, int) or noise_steps < 1):
            raise ValueError(f"Invalid noise_steps: {noise_steps!r}; must be an int >= 1")
        if noise_shape not in NOISE_SHAPES:
            raise ValueError(f"Invalid noise_shape: {noise_shape!r}; expected one of "
                             f"{NOISE_SHAPES}")
        if noise_guard is not None and not (noise_guard > 0.0 and math.isfinite(noise_guard)):
            raise ValueError(f"Invalid noise_guard: {noise_guard}; must be a finite value > 0 "
                             "or None")
        if noise_trigger not in NOISE_TRIGGERS:
            raise ValueError(f"Invalid noise_trigger: {noise_trigger!r}; expected one of "
                             f"{NOISE_TRIGGERS}")
        if stall_threshold is not None and not stall_threshold >= 0.0:
            raise ValueError(f"Invalid stall_threshold: {stall_threshold}; must be >= 0")
        if stall_steps is not None and stall_steps < 1:
            raise ValueError(f"Invalid stall_steps: {stall_steps}; must be >= 1")
        if noise_cooldown is not None and noise_cooldown < 0:
            raise ValueError(f"Invalid noise_cooldown: {noise_cooldown}; must be >= 0")
        generators = resolve_generators(generator, num_models, seed)

        # Options left unset (None) stay None in the defaults, so that a parameter group can
        # set them; add_param_group fills in the effective values per group.
        defaults = dict(
            lr=lr, base=base, momentum=momentum, dampening=dampening, nesterov=nesterov,
            weight_decay=weight_decay, betas=betas, eps=eps, amsgrad=amsgrad,
            aggregation=aggregation, blend=blend, blend_schedule=blend_schedule,
            blend_steps=blend_steps, noise=noise, noise_schedule=noise_schedule,
            noise_decay=noise_decay, noise_gamma=noise_gamma, noise_eps=noise_eps,
            noise_clip=noise_clip, noise_steps=noise_steps, noise_shape=noise_shape,
        )
        super().__init__(params, defaults)
        self.num_models = num_models
        check_stacked((p for g in self.param_groups for p in g["params"]), num_models)
        # The trigger's options are the optimizer's, not a group's: checked against every group.
        _check_consistent(dict(noise=max(g["noise"] for g in self.param_groups),
                               noise_trigger=noise_trigger, noise_guard=noise_guard,
                               stall_threshold=stall_threshold,
                               stall_steps=stall_steps, noise_cooldown=noise_cooldown))
        self.generators = generators
        self.triggers = [StallTrigger(
            noise_trigger, _DEFAULTS["stall_threshold"] if stall_threshold is None
            else stall_threshold, _DEFAULTS["stall_steps"] if stall_steps is None
            else stall_steps, _DEFAULTS["noise_cooldown"] if noise_cooldown is None
            else noise_cooldown) for _ in generators]
        self.noise_guard = noise_guard
        # Kicks the loss guard undid, per model (state: part of state_dict()).
        self.rejected = [0] * len(generators)
        self.distributed = distributed
        self.steps = 0  # steps taken; the schedules' t

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group (torch's rules), refusing options that contradict each other
        and filling in the effective value of every option left unset (None)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_consistent(group)
        for name, value in _DEFAULTS.items():
            if name in group and group[name] is None:
                group[name] = value
        if group["weight_decay"] is None:  # torch's defaults: AdamW decays, SGD and Adam do not
            group["weight_decay"] = 1e-2 if group["base"] == "adamw" else 0.0
        if group["blend"] is None:  # "blend" without a weight is lam = 1 (as "rms")
            group["blend"] = 1.0

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["synaprune"] = {
            "steps": self.steps,
            "trigger": [t.state() for t in self.triggers],
            "generator": [g.get_state() for g in self.generators],
            "rejected": list(self.rejected),
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("synaprune", None)
        super().load_state_dict(state_dict)
        if extra is not None:
            self.steps = int(extra["steps"])
            if len(extra["generator"]) != len(self.generators):
                raise ValueError(f"state_dict has noise state for {len(extra['generator'])} "
                                 f"models; this optimizer has {len(self.generators)}")
            for t, state in zip(self.triggers, extra["trigger"], strict=True):
                t.load(state)
            for g, state in zip(self.generators, extra["generator"], strict=True):
                g.set_state(state)
            # Saved before the guard existed: no kick was undone.
            self.rejected = list(extra.get("rejected", [0] * len(self.generators)))

    def _select_models(self, index: list[int]) -> None:
        """Per-model state for :func:`synaprune.optim._stacked.select_models`."""
        self.generators = [self.generators[i] for i in index]
        self.triggers = [self.triggers[i] for i in index]
        self.rejected = [self.rejected[i] for i in index]
        self.num_models = len(index)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear gradients and the per-example statistics accumulated on the parameters."""
        super().zero_grad(set_to_none=set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                fields.clear(p)

    # -- the step ---------------------------------------------------------------------------

    def _reduce_stats(self, params: list[Tensor], stats: list[fields.Stats]) -> None:
        """Sum grad_sumsq and grad_batch_size over ranks, in one all-reduce."""
        sumsqs: list[Tensor] = [s.sumsq for s in stats]  # type: ignore[misc]
        flat = torch.cat([s.reshape(-1) for s in sumsqs]
                         + [sumsqs[0].new_tensor([float(s.batch_size) for s in stats])])
        dist.all_reduce(flat)
        offset = 0
        for s in sumsqs:
            s.copy_(flat[offset:offset + s.numel()].view_as(s))
            offset += s.numel()
        for i, (p, s) in enumerate(zip(params, stats, strict=True)):
            s.batch_size = round(flat[offset + i].item())
            fields.set_batch_size(p, s.batch_size)

    def _kicks(self) -> list[bool]:
        """Advance each model's trigger by this step's gradient norm; whether each kicks now."""
        if self.triggers[0].mode == "always":
            return [t(math.inf) for t in self.triggers]
        sq = [p.grad.pow(2).reshape(self.num_models or 1, -1).sum(1)
              for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms = (torch.stack(sq).sum(0).sqrt().tolist() if sq
                 else [0.0] * len(self.triggers))
        return [t(n) for t, n in zip(self.triggers, norms, strict=True)]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None, *,  # type: ignore[override]
             guard: Callable[[], Tensor | float] | None = None) -> float | None:
        """Take one step.

        Args:
            closure: re-evaluates the model and returns the loss (optional, as in torch.optim).
            guard: for ``noise_guard``: evaluates the loss at the current parameters, forward
                only (it is called under ``torch.no_grad()``; no backward, ``.grad`` is not
                touched), on the SAME batch as this step's gradient, and returns it: a number
                for one model, a tensor of the ``num_models`` losses [S] in stacked mode (one
                per model, not their sum: each model's kick is judged on its own loss). It is
                called twice on a step that kicks (after the update, after the kick) and not
                at all otherwise. Required when ``noise_guard`` is set and this step kicks;
                refused when ``noise_guard`` is not set (it would be silently unused).

        Returns:
            The closure's loss, or None.

        Example (a user's loop with the guard)::

            opt = SynaPrune(model.parameters(), lr=0.5, noise=0.2, noise_schedule="linear",
                            noise_steps=3000, noise_guard=1.0)
            for x, y in batches:
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step(guard=lambda: loss_fn(model(x), y))
        """
        if guard is not None and self.noise_guard is None:
            raise ValueError("step(guard=...) is only used with noise_guard set; set "
                             "noise_guard=r in SynaPrune(...) or drop guard")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        t = self.steps
        needs_stats: list[Tensor] = []
        for group in self.param_groups:
            if group["aggregation"] != "mean":
                needs_stats.extend(p for p in group["params"] if p.grad is not None)
        # The statistics of each p.grad, reconciled with whatever was done to .grad since
        # backward (clipping, unscaling); an irreconcilable change raises here.
        stats: dict[int, fields.Stats] = {}
        for p in needs_stats:
            s = fields.read(p)
            if s is None or s.sumsq is None:
                raise RuntimeError("aggregation 'rms'/'blend' needs per-example statistics, but "
                                   "a parameter with a gradient has none: "
                                   + fields.missing_reason(p))
            if s.reduction == "mean" and s.passes > 1 and s.pass_size is None:
                # Each micro-batch's 1/B_p weighs its examples differently, and the statistics
                # keep only their sum: the root mean square in .grad's scale is not known.
                raise RuntimeError(
                    "aggregation 'rms'/'blend': .grad accumulates mean-reduced micro-batches of "
                    "different sizes; use equal micro-batch sizes, or a sum-reduced loss with "
                    "PerExampleGradStats(model, reduction='sum')")
            stats[id(p)] = s
        use_dist = (self.distributed if self.distributed is not None
                    else dist.is_available() and dist.is_initialized())
        if use_dist and needs_stats and dist.get_world_size() > 1:
            self._reduce_stats(needs_stats, [stats[id(p)] for p in needs_stats])

        kicks = self._kicks() if any(g["noise"] > 0 for g in self.param_groups) else []
        # sigma_t of each group; 0 where a schedule has decayed to 0 (then nothing is drawn).
        sigmas = [noise_scale(g["noise"], t, schedule=g["noise_schedule"],
                              decay=g["noise_decay"], gamma=g["noise_gamma"],
                              steps=g["noise_steps"]) if g["noise"] > 0 else 0.0
                  for g in self.param_groups]
        for group in self.param_groups:
            lam = 0.0
            if group["aggregation"] != "mean":
                lam0 = 1.0 if group["aggregation"] == "rms" else group["blend"]
                lam = blend_weight(lam0, t, schedule=group["blend_schedule"],
                                   steps=group["blend_steps"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SynaPrune does not support sparse gradients")
                d = p.grad
                if lam != 0.0:
                    s = stats[id(p)]
                    d = aggregate(p.grad, s.sumsq, s.batch_size,  # type: ignore[arg-type]
                                  lam=lam, reduction=s.reduction, extra=s.extra,
                                  passes=s.passes)
                state = self.state[p]
                if group["base"] == "sgd":
                    sgd_update(p, d, state, lr=group["lr"], momentum=group["momentum"],
                               dampening=group["dampening"], nesterov=group["nesterov"],
                               weight_decay=group["weight_decay"])
                else:
                    adam_update(p, d, state, lr=group["lr"], betas=group["betas"],
                                eps=group["eps"], weight_decay=group["weight_decay"],
                                amsgrad=group["amsgrad"],
                                decoupled_weight_decay=group["base"] == "adamw")
        if any(kicks) and any(sigma > 0 for sigma in sigmas):
            self._kick(kicks, sigmas, guard)
        self.steps += 1
        return loss

    def _guard_losses(self, guard: Callable[[], Tensor | float]) -> Tensor:
        """The guard's losses as a float64 tensor [S] (S = 1 for one model)."""
        value = torch.as_tensor(guard()).detach().to("cpu", torch.float64).reshape(-1)
        if value.numel() != len(self.generators):
            raise ValueError(
                f"Invalid guard: it returned {value.numel()} losses, expected "
                f"{len(self.generators)} (" + ("one per stacked model, not their sum)"
                                               if self.num_models else "one model)"))
        return value

    def _kick(self, kicks: list[bool], sigmas: list[float],
              guard: Callable[[], Tensor | float] | None) -> None:
        """Mechanism B after the update: kick the models whose trigger fired, then (with
        ``noise_guard``) undo the kicks that raised a model's loss past the bound."""
        kicked = [p for g, sigma in zip(self.param_groups, sigmas, strict=True) if sigma > 0
                  for p in g["params"] if p.grad is not None]
        saved: list[Tensor] = []
        if self.noise_guard is not None:
            if guard is None:
                raise RuntimeError("noise_guard needs the loss: call step(guard=fn) with fn "
                                   "returning the loss at the current parameters (forward "
                                   "only, same batch)")
            before = self._guard_losses(guard)
            saved = [p.detach().clone() for p in kicked]
        for group, sigma in zip(self.param_groups, sigmas, strict=True):
            if sigma == 0.0:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                for m, (kick, gen) in enumerate(zip(kicks, self.generators, strict=True)):
                    if kick:
                        add_weight_noise(p if self.num_models is None else p[m], sigma,
                                         eps0=group["noise_eps"], clip=group["noise_clip"],
                                         generator=gen, shape=group["noise_shape"])
        if self.noise_guard is None:
            return
        undo = guard_rejects(before, self._guard_losses(guard), self.noise_guard)
        undo &= torch.tensor(kicks)
        if not bool(undo.any()):
            return
        for m in undo.nonzero().flatten().tolist():
            self.rejected[m] += 1
        for p, old in zip(kicked, saved, strict=True):
            if self.num_models is None:
                p.copy_(old)
            else:
                mask = undo.to(p.device).view(-1, *([1] * (p.dim() - 1)))
                p.copy_(torch.where(mask, old, p))
