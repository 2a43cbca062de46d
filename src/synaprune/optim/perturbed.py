"""Noise-based and sharpness-aware baselines as ordinary ``torch.optim`` optimizers.

* :class:`PerturbedGD`: gradient descent with a uniform-ball kick when the gradient is small
  (Jin et al. 2017, "How to escape saddle points efficiently").
* :class:`GradientNoise`: SGD on the gradient plus annealed Gaussian noise of variance
  eta / (1 + t)**gamma (Neelakantan et al. 2015, "Adding gradient noise improves learning").
* :class:`SAM`: sharpness-aware minimisation (Foret et al. 2021): ascend to
  w + rho * g / ||g||, take the gradient there, step from w.

Stacked mode: ``num_models=S``, the convention of every optimizer in :mod:`synaprune.optim`
(``synaprune/optim/_stacked.py``). Norms (the gradient norm, SAM's ||g||, the stall test) are
computed per model over all of that model's slices ``p[s]``; model s draws its noise from
generator s with ``torch.randn(p.shape[1:], generator=g_s)`` (or ``torch.rand``) parameter by
parameter in parameter order, so it draws exactly the numbers a single model given ``g_s``
draws. Per-model state lives in lists of length S and round-trips through ``state_dict``
together with the generators' states.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from synaprune.optim._stacked import Generators, check_stacked, resolve_generators

__all__ = ["SAM", "GradientNoise", "PerturbedGD"]


class _PerModel(Optimizer):
    """Shared machinery: generators, stacked mode, per-model norms, extra state.

    Subclasses keep per-model counters in ``self.extra`` (a dict of JSON-friendly values, lists
    of length S for per-model ones); it is saved in ``state_dict()["per_model"]``.
    """

    def __init__(self, params: Any, defaults: dict[str, Any], generator: Generators,
                 num_models: int | None) -> None:
        super().__init__(params, defaults)
        self.generators = resolve_generators(generator, num_models)
        self.num_models = num_models
        check_stacked(self._params(), num_models)
        self.extra: dict[str, Any] = {"steps": 0}

    @property
    def _models(self) -> int:
        return self.num_models or 1

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _slice(self, p: Tensor, m: int) -> Tensor:
        """Model m's part of ``p`` (``p`` itself in single mode)."""
        return p if self.num_models is None else p[m]

    def _grad_norms(self) -> Tensor:
        """Per-model gradient norms over all parameters, float64 tensor of size [S] ([1])."""
        total = torch.zeros(self._models, dtype=torch.float64)
        for p in self._params():
            if p.grad is not None:
                total += p.grad.detach().reshape(self._models, -1).square().sum(1).double()
        return total.sqrt()

    def _select_models(self, index: list[int]) -> None:
        """Per-model state for :func:`synaprune.optim._stacked.select_models`."""
        self.generators = [self.generators[i] for i in index]
        self.extra = {k: [v[i] for i in index] if isinstance(v, list) else v
                      for k, v in self.extra.items()}
        self.num_models = len(index)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["per_model"] = {
            "extra": {k: list(v) if isinstance(v, list) else v for k, v in self.extra.items()},
            "generator": [g.get_state() for g in self.generators],
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("per_model", None)
        if extra is not None and len(extra["generator"]) != len(self.generators):
            raise ValueError(f"state_dict has noise state for {len(extra['generator'])} "
                             f"models; this optimizer has {len(self.generators)}")
        super().load_state_dict(state_dict)
        if extra is not None:
            self.extra = {k: list(v) if isinstance(v, list) else v
                          for k, v in extra["extra"].items()}
            for g, state in zip(self.generators, extra["generator"], strict=True):
                g.set_state(state)


def _sgd_step(p: Tensor, d: Tensor, state: dict[str, Any], lr: float, momentum: float) -> None:
    """p <- p - lr * v with v <- momentum * v + d (torch's heavy-ball form); v = d if 0."""
    if momentum != 0.0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = d.detach().clone()
        else:
            buf.mul_(momentum).add_(d)
        d = buf
    p.add_(d, alpha=-lr)


def _check_common(lr: float, momentum: float) -> None:
    if not (math.isfinite(lr) and lr >= 0.0):
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"Invalid momentum value: {momentum}; must be in [0, 1)")


class PerturbedGD(_PerModel):
    r"""Perturbed gradient descent (Jin et al. 2017, Algorithm 2, without its stopping rule).

    At step t, with g_t the gradient at x_t:

    * if ||g_t|| <= ``threshold`` and t - t_noise > ``t_thres`` (no kick in the last
      ``t_thres`` steps): kick, x_t <- x_t + xi_t with xi_t uniform in the ball of radius
      ``radius``, and set t_noise = t;
    * x_{t+1} = x_t - lr * g_t.

    The paper takes the step from the kicked point with the gradient there; this optimizer sees
    one gradient per step, so the step uses g_t (taken where the gradient is small anyway) and
    the kicked point's gradient drives the next step. t_noise starts at -t_thres - 1, so the
    first step may kick. The ball sample for a model with d parameters in all is
    xi = radius * u**(1/d) * z / ||z||: z ~ N(0, I) drawn parameter by parameter, then
    u ~ U[0, 1) (one ``torch.rand(())``); nothing is drawn on steps without a kick.

    Args:
        params: Parameters, or stacked [S, ...] tensors (with ``num_models=S``).
        lr: Step size eta.
        radius: Radius r of the kick.
        threshold: g_thres, the gradient-norm threshold.
        t_thres: Steps after a kick during which no kick happens.
        generator: A ``torch.Generator``, a sequence of S of them (stacked mode), or None (a
            seed per model drawn from torch's global generator).
        num_models: S for stacked mode (parameters [S, ...]), or None for one model.

    Example:
        >>> w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        >>> opt = PerturbedGD([w], lr=0.1, radius=0.5, generator=torch.Generator().manual_seed(0))
        >>> w.pow(2).sum().backward()
        >>> opt.step()
        >>> bool(0 < w.norm() <= 0.5), opt.extra["kicks"]
        (True, [1])
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 0.1, *,
                 radius: float = 0.1, threshold: float = 1e-3, t_thres: int = 50,
                 generator: Generators = None, num_models: int | None = None) -> None:
        _check_common(lr, 0.0)
        if not (math.isfinite(radius) and radius >= 0.0):
            raise ValueError(f"Invalid radius: {radius}; must be a finite value >= 0")
        if not threshold >= 0.0:
            raise ValueError(f"Invalid threshold: {threshold}; must be >= 0")
        if t_thres < 0:
            raise ValueError(f"Invalid t_thres: {t_thres}; must be >= 0")
        super().__init__(params, dict(lr=lr, radius=radius, threshold=threshold,
                                      t_thres=t_thres), generator, num_models)
        if len(self.param_groups) != 1:
            raise ValueError("Invalid params: PerturbedGD takes one parameter group (the ball "
                             "is over all parameters)")
        self.extra["t_noise"] = [-t_thres - 1] * self._models
        self.extra["kicks"] = [0] * self._models

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Take one step; returns the closure's loss (the closure is optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        t = self.extra["steps"]
        params = [p for p in group["params"] if p.grad is not None]
        norms = self._grad_norms().tolist()
        deltas = [p.grad.detach().mul(-group["lr"]) for p in params]  # type: ignore[union-attr]
        for m, gen in enumerate(self.generators):
            if not (norms[m] <= group["threshold"]
                    and t - self.extra["t_noise"][m] > group["t_thres"]):
                continue
            self.extra["t_noise"][m] = t
            self.extra["kicks"][m] += 1
            zs = [torch.randn(self._slice(p, m).shape, generator=gen, dtype=p.dtype,
                              device=gen.device) for p in params]
            d = sum(z.numel() for z in zs)
            if d == 0:
                continue
            u = torch.rand((), generator=gen, dtype=torch.float64, device=gen.device)
            znorm = torch.sqrt(sum(z.double().square().sum() for z in zs))  # type: ignore[arg-type]
            scale = float(group["radius"] * u.pow(1.0 / d) / znorm)
            for p, z in zip(params, zs, strict=True):
                self._slice(p, m).add_(z.to(p.device), alpha=scale)
        for p, delta in zip(params, deltas, strict=True):
            p.add_(delta)
        self.extra["steps"] = t + 1
        return loss


class GradientNoise(_PerModel):
    r"""SGD on a noisy gradient (Neelakantan et al. 2015).

    d_t = g_t + sigma_t * xi_t with xi_t ~ N(0, I) and sigma_t**2 = eta / (1 + t)**gamma
    (t = 0 at the first step); then torch's heavy-ball SGD on d_t: v <- momentum * v + d_t,
    p <- p - lr * v (v = d_t without momentum). ``p.grad`` is left unchanged. xi is drawn
    every step, parameter by parameter, ``torch.randn(shape, generator=...)``.

    Args:
        params: Parameters, or stacked [S, ...] tensors (with ``num_models=S``).
        lr: Step size.
        eta: Initial noise variance eta.
        gamma: Decay exponent of the variance.
        momentum: Heavy-ball momentum in [0, 1).
        generator: As for :class:`PerturbedGD`.
        num_models: S for stacked mode (parameters [S, ...]), or None for one model.

    Example:
        >>> w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> opt = GradientNoise([w], lr=0.1, eta=0.01, generator=torch.Generator().manual_seed(0))
        >>> w.sum().backward()
        >>> opt.step()
        >>> opt.sigma(0), opt.extra["steps"]
        (0.1, 1)
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 0.1, *,
                 eta: float = 0.01, gamma: float = 0.55, momentum: float = 0.0,
                 generator: Generators = None, num_models: int | None = None) -> None:
        _check_common(lr, momentum)
        if not (math.isfinite(eta) and eta >= 0.0):
            raise ValueError(f"Invalid eta: {eta}; must be a finite value >= 0")
        if not (math.isfinite(gamma) and gamma >= 0.0):
            raise ValueError(f"Invalid gamma: {gamma}; must be a finite value >= 0")
        super().__init__(params, dict(lr=lr, eta=eta, gamma=gamma, momentum=momentum),
                         generator, num_models)

    def sigma(self, t: int, group: int = 0) -> float:
        """Noise standard deviation sigma_t = sqrt(eta / (1 + t)**gamma) of a group."""
        g = self.param_groups[group]
        return math.sqrt(g["eta"] / (1.0 + t) ** g["gamma"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Take one step; returns the closure's loss (the closure is optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        t = self.extra["steps"]
        for i, group in enumerate(self.param_groups):
            sigma = self.sigma(t, i)
            for p in group["params"]:
                if p.grad is None:
                    continue
                xi = torch.stack([
                    torch.randn(self._slice(p, m).shape, generator=gen, dtype=p.dtype,
                                device=gen.device)
                    for m, gen in enumerate(self.generators)
                ]).to(p.device)
                if self.num_models is None:
                    xi = xi[0]
                d = p.grad.detach() + sigma * xi
                _sgd_step(p, d, self.state[p], group["lr"], group["momentum"])
        self.extra["steps"] = t + 1
        return loss


class SAM(_PerModel):
    r"""Sharpness-aware minimisation (Foret et al. 2021) over heavy-ball SGD.

    Protocol (as in the reference implementation of Foret et al. and ``davda54/sam``): the
    gradient g at w is already in ``p.grad`` when :meth:`step` is called, and ``closure``
    zeroes the gradients, evaluates the loss at the current parameters and back-propagates.
    A step:

    1. e = rho * g / ||g|| (e = 0 where ||g|| = 0), per model over all parameters;
    2. w <- w + e, then ``closure()`` leaves g_sam = grad L(w + e) in ``p.grad``;
    3. w is restored exactly, and v <- momentum * v + g_sam, w <- w - lr * v.

    Deterministic: it draws no random numbers.

    Args:
        params: Parameters, or stacked [S, ...] tensors (with ``num_models=S``).
        lr: Step size.
        rho: Radius of the ascent step.
        momentum: Heavy-ball momentum in [0, 1).
        num_models: S for stacked mode (parameters [S, ...]), or None for one model.

    Returns of step: the closure's loss, at the perturbed point w + e.

    Example:
        >>> w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        >>> opt = SAM([w], lr=0.1, rho=0.05)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = w.pow(2).sum()
        ...     loss.backward()
        ...     return loss
        >>> _ = closure()
        >>> _ = opt.step(closure)
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 0.1, *,
                 rho: float = 0.05, momentum: float = 0.0, num_models: int | None = None) -> None:
        _check_common(lr, momentum)
        if not (math.isfinite(rho) and rho >= 0.0):
            raise ValueError(f"Invalid rho: {rho}; must be a finite value >= 0")
        # Deterministic: fixed generators, never drawn from, only keep the machinery uniform.
        super().__init__(params, dict(lr=lr, rho=rho, momentum=momentum),
                         [torch.Generator() for _ in range(num_models)]
                         if num_models is not None else torch.Generator(), num_models)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Take one step (two gradients: the one in ``p.grad`` and the closure's).

        Raises:
            RuntimeError: Without a closure.
        """
        if closure is None:
            raise RuntimeError("SAM needs a closure: it re-evaluates the gradient at w + e")
        inv = self._grad_norms().reciprocal().nan_to_num(0.0, 0.0, 0.0)  # e = 0 where g = 0
        saved: list[tuple[Tensor, Tensor]] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                scale = (group["rho"] * inv).to(p.dtype)
                scale = (scale.view(()) if self.num_models is None
                         else scale.view(-1, *([1] * (p.dim() - 1))))
                saved.append((p, p.detach().clone()))
                p.add_(p.grad * scale)
        with torch.enable_grad():
            loss = closure()
        for p, w in saved:
            p.copy_(w)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    _sgd_step(p, p.grad.detach(), self.state[p], group["lr"],
                              group["momentum"])
        self.extra["steps"] += 1
        return loss
