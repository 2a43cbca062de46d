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

from synaprune.optim.aggregation import AGGREGATIONS, aggregate
from synaprune.optim.base import adam_update, sgd_update
from synaprune.optim.noise import NOISE_TRIGGERS, StallTrigger, add_weight_noise
from synaprune.optim.schedules import (
    BLEND_SCHEDULES,
    NOISE_SCHEDULES,
    blend_weight,
    noise_scale,
)
from synaprune.probes import _fields as fields

BASES = ("sgd", "adam")


class SynaPrune(Optimizer):
    r"""SGD or Adam driven by SynaPrune's aggregated direction, with optional weight noise.

    With ``aggregation="mean"`` and ``noise=0`` it is ``torch.optim.SGD`` (``base="sgd"``) or
    ``torch.optim.Adam`` (``base="adam"``), bit for bit on the CPU.

    ``aggregation="rms"`` or ``"blend"`` needs per-example statistics: attach
    :class:`synaprune.PerExampleGradStats` to the model before the forward pass. They follow
    ``.grad``: a rescaling of ``.grad`` between backward and step (``clip_grad_norm_``,
    ``torch.amp.GradScaler`` with ``scaler.step(opt)``, a manual multiplication) scales the
    aggregated direction alike; any other change of ``.grad`` (weight decay added into it: use
    ``weight_decay`` here) raises RuntimeError at the step. Momentum follows torch's convention
    (v <- mu v + (1 - dampening) d; p <- p - lr v), not Sutskever's.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate (> 0 is not required: 0 is allowed; negative is not).
        base: ``"sgd"`` or ``"adam"``.
        momentum, dampening, nesterov, weight_decay: as in ``torch.optim.SGD`` (weight decay also
            applies to Adam, as L2 in the gradient like ``torch.optim.Adam``).
        betas, eps, amsgrad: as in ``torch.optim.Adam``.
        aggregation: ``"mean"`` (d = gbar), ``"rms"`` (d = sign(gbar) * r) or ``"blend"``
            (d = gbar + lam * sign(gbar) * (r - |gbar|)).
        blend: lam in [0, 1] for ``"blend"`` (``"rms"`` is lam = 1, ``"mean"`` lam = 0).
        blend_schedule: ``"constant"``, ``"linear"`` or ``"cosine"`` decay of lam to 0 (back to
            ``mean``) over ``blend_steps`` steps; applies to ``"rms"`` and ``"blend"``.
        blend_steps: length of the decay.
        noise: sigma_0, the relative weight-noise scale; 0 turns mechanism B off.
        noise_schedule: ``"constant"``, ``"exponential"`` (sigma_0 * noise_decay**t) or
            ``"anneal"`` (variance sigma_0**2 / (1 + t)**noise_gamma).
        noise_decay, noise_gamma: parameters of those schedules.
        noise_eps: eps0, so that zero weights still move.
        noise_clip: cap on the relative kick |sigma_t * xi| per coordinate (the guard against
            multiplicative blow-up); None for no cap.
        noise_trigger: ``"always"`` or ``"stall"``: kick only after the gradient norm stayed below
            ``stall_threshold`` for ``stall_steps`` steps, then wait ``noise_cooldown`` steps.
        generator: ``torch.Generator`` for the noise; or give ``seed``. Without either, a seed is
            drawn from torch's global generator, so ``torch.manual_seed`` makes runs repeatable.
            A sequence of S generators switches on *stacked* mode, for training S independent
            models at once (the lab's seed batching): dim 0 of every parameter indexes the
            models; gradient norms and stall triggers are per model, and model s draws its noise
            from generator s exactly as a single model with that generator would.
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
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        amsgrad: bool = False,
        aggregation: str = "mean",
        blend: float = 1.0,
        blend_schedule: str = "constant",
        blend_steps: int | None = None,
        noise: float = 0.0,
        noise_schedule: str = "constant",
        noise_decay: float = 0.999,
        noise_gamma: float = 0.55,
        noise_eps: float = 1e-8,
        noise_clip: float | None = None,
        noise_trigger: str = "always",
        stall_threshold: float = 1e-3,
        stall_steps: int = 10,
        noise_cooldown: int = 50,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        seed: int | None = None,
        distributed: bool | None = None,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if base not in BASES:
            raise ValueError(f"Invalid base: {base!r}; expected one of {BASES}")
        if not momentum >= 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Invalid nesterov: requires momentum > 0 and zero dampening")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"Invalid aggregation: {aggregation!r}; expected one of "
                             f"{AGGREGATIONS}")
        if not 0.0 <= blend <= 1.0:
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
        if not 0.0 < noise_decay <= 1.0:
            raise ValueError(f"Invalid noise_decay: {noise_decay}; must be in (0, 1]")
        if not noise_gamma >= 0.0:
            raise ValueError(f"Invalid noise_gamma: {noise_gamma}; must be >= 0")
        if not noise_eps >= 0.0:
            raise ValueError(f"Invalid noise_eps: {noise_eps}; must be >= 0")
        if noise_clip is not None and not noise_clip > 0.0:
            raise ValueError(f"Invalid noise_clip: {noise_clip}; must be > 0 or None")
        if noise_trigger not in NOISE_TRIGGERS:
            raise ValueError(f"Invalid noise_trigger: {noise_trigger!r}; expected one of "
                             f"{NOISE_TRIGGERS}")
        if not stall_threshold >= 0.0:
            raise ValueError(f"Invalid stall_threshold: {stall_threshold}; must be >= 0")
        if stall_steps < 1:
            raise ValueError(f"Invalid stall_steps: {stall_steps}; must be >= 1")
        if noise_cooldown < 0:
            raise ValueError(f"Invalid noise_cooldown: {noise_cooldown}; must be >= 0")
        if generator is not None and seed is not None:
            raise ValueError("Invalid seed: give either generator or seed, not both")

        defaults = dict(
            lr=lr, base=base, momentum=momentum, dampening=dampening, nesterov=nesterov,
            weight_decay=weight_decay, betas=betas, eps=eps, amsgrad=amsgrad,
            aggregation=aggregation, blend=blend, blend_schedule=blend_schedule,
            blend_steps=blend_steps, noise=noise, noise_schedule=noise_schedule,
            noise_decay=noise_decay, noise_gamma=noise_gamma, noise_eps=noise_eps,
            noise_clip=noise_clip,
        )
        super().__init__(params, defaults)
        if generator is None:
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)).item())
            generator = torch.Generator().manual_seed(seed)
        if isinstance(generator, torch.Generator):
            self.num_models: int | None = None
            generators = [generator]
        else:
            generators = list(generator)
            if not generators or not all(isinstance(g, torch.Generator) for g in generators):
                raise ValueError("Invalid generator: expected a torch.Generator or a non-empty "
                                 "sequence of them (one per stacked model)")
            self.num_models = len(generators)
            for group in self.param_groups:
                for p in group["params"]:
                    if p.dim() == 0 or p.shape[0] != self.num_models:
                        raise ValueError(
                            f"Invalid generator: {self.num_models} generators mean stacked "
                            f"models along dim 0, but a parameter has shape {tuple(p.shape)}")
        self.generators = generators
        self.triggers = [StallTrigger(noise_trigger, stall_threshold, stall_steps,
                                      noise_cooldown) for _ in generators]
        self.distributed = distributed
        self.steps = 0  # steps taken; the schedules' t

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["synaprune"] = {
            "steps": self.steps,
            "trigger": [t.state() for t in self.triggers],
            "generator": [g.get_state() for g in self.generators],
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
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one step.

        Args:
            closure: re-evaluates the model and returns the loss (optional, as in torch.optim).

        Returns:
            The closure's loss, or None.
        """
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
            stats[id(p)] = s
        use_dist = (self.distributed if self.distributed is not None
                    else dist.is_available() and dist.is_initialized())
        if use_dist and needs_stats and dist.get_world_size() > 1:
            self._reduce_stats(needs_stats, [stats[id(p)] for p in needs_stats])

        kicks = self._kicks() if any(g["noise"] > 0 for g in self.param_groups) else []
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
                                  lam=lam, reduction=s.reduction, extra=s.extra)
                state = self.state[p]
                if group["base"] == "sgd":
                    sgd_update(p, d, state, lr=group["lr"], momentum=group["momentum"],
                               dampening=group["dampening"], nesterov=group["nesterov"],
                               weight_decay=group["weight_decay"])
                else:
                    adam_update(p, d, state, lr=group["lr"], betas=group["betas"],
                                eps=group["eps"], weight_decay=group["weight_decay"],
                                amsgrad=group["amsgrad"])
            if any(kicks) and group["noise"] > 0:
                sigma = noise_scale(group["noise"], t, schedule=group["noise_schedule"],
                                    decay=group["noise_decay"], gamma=group["noise_gamma"])
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    for m, (kick, gen) in enumerate(zip(kicks, self.generators, strict=True)):
                        if kick:
                            add_weight_noise(p if self.num_models is None else p[m], sigma,
                                             eps0=group["noise_eps"], clip=group["noise_clip"],
                                             generator=gen)
        self.steps += 1
        return loss
