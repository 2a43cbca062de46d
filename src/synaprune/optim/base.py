"""The base update that SynaPrune's direction feeds: SGD with momentum, Adam or AdamW.

These are functional, per-tensor updates that perform exactly the operations of
``torch.optim.SGD``, ``torch.optim.Adam`` and ``torch.optim.AdamW`` on the CPU (their
single-tensor code path), so that SynaPrune with every mechanism off reproduces them bit for
bit; a test holds them to it.
State lives in the per-parameter dict the optimizer owns, under torch's own key names
(``momentum_buffer``, ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


@torch.no_grad()
def sgd_update(
    param: Tensor,
    direction: Tensor,
    state: dict[str, Any],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
) -> None:
    """One SGD step in place, torch's convention: v <- mu * v + (1 - dampening) * d; p -= lr * v.

    Args:
        param: the parameter, updated in place.
        direction: the update direction d (the gradient, or SynaPrune's aggregate).
        state: the parameter's optimizer state; ``momentum_buffer`` is created on first use.
        lr, momentum, dampening, nesterov, weight_decay: as in ``torch.optim.SGD``.
    """
    d = direction
    if weight_decay != 0:
        d = d.add(param, alpha=weight_decay)
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = d.detach().clone()
            state["momentum_buffer"] = buf
        else:
            buf.mul_(momentum).add_(d, alpha=1 - dampening)
        d = d.add(buf, alpha=momentum) if nesterov else buf
    param.add_(d, alpha=-lr)


@torch.no_grad()
def adam_update(
    param: Tensor,
    direction: Tensor,
    state: dict[str, Any],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    decoupled_weight_decay: bool = False,
) -> None:
    """One Adam step in place, with torch's bias correction.

    Args:
        param: the parameter, updated in place.
        direction: the update direction d.
        state: the parameter's optimizer state; created on first use.
        lr, betas, eps, weight_decay, amsgrad: as in ``torch.optim.Adam``.
        decoupled_weight_decay: False: L2 weight decay, d + weight_decay * p enters the moments
            (``torch.optim.Adam``); True: p <- p * (1 - lr * weight_decay) before the moments,
            which see d alone (``torch.optim.AdamW``, Loshchilov & Hutter 2019).
    """
    beta1, beta2 = betas
    if not state:
        # torch keeps the step count as a float32 tensor; so do we, for state_dict parity.
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if amsgrad:
            state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    step_t: Tensor = state["step"]
    exp_avg: Tensor = state["exp_avg"]
    exp_avg_sq: Tensor = state["exp_avg_sq"]
    step_t += 1
    d = direction
    if weight_decay != 0:
        if decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)
        else:
            d = d.add(param, alpha=weight_decay)
    exp_avg.lerp_(d, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(d, d, value=1 - beta2)
    step = step_t.item()
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    if amsgrad:
        max_sq: Tensor = state["max_exp_avg_sq"]
        torch.maximum(max_sq, exp_avg_sq, out=max_sq)
        denom = (max_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    else:
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)
