"""Mechanism C (the activation-gradient penalty) for S stacked ``nn.Sequential`` models.

The same penalised loss as :class:`synaprune.ActivationGradientPenalty` on one model,

    L' = L + beta * (1/B) sum_i sum_l ||d l_i / d h_{l,i}||^2
         + gamma * sum_l relu(c_l - ||W_l||_F)^2,

computed for S seeds at once: the layers run one by one (each ``vmap``-ed over the seeds with
``torch.func.functional_call``) so that the hidden activations h_l, of size [S, B, ...], are
ordinary tensors; ``torch.autograd.grad(..., create_graph=True)`` of the seeds' summed data loss
gives every seed's own dL/dh_l (the seeds do not interact), and for a mean-reduced loss
(1/B) sum_i ||d l_i/d h_{l,i}||^2 = B ||dL/dh_l||^2. h_l are the outputs of the activation
modules (``synaprune.optim.penalty.ACTIVATIONS``), W_l the weights of the Linear/Conv layers,
c_l their norms when the penalty is built: the defaults of ``ActivationGradientPenalty``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from synaprune.optim.penalty import ACTIVATIONS, WEIGHTED
from synaprune.problems import Problem

__all__ = ["StackedPenalty"]


class StackedPenalty:
    """Mechanism C's gradients for stacked [S, ...] parameters of an ``nn.Sequential`` model.

    Args:
        problem: A per-example problem (mean-reduced loss).
        base: The architecture (may be on the ``meta`` device); must be ``nn.Sequential``.
        params: Stacked parameters by name, [S, ...] each, at initialisation (c_l are taken
            from them).
        beta: Weight of the activation-gradient term (>= 0).
        gamma: Weight of the stabiliser (>= 0).

    Raises:
        ValueError: For a non-Sequential model, an exact-loss problem, a model without
            activation modules, or a negative weight.
    """

    def __init__(self, problem: Problem, base: nn.Module, params: Mapping[str, Tensor], *,
                 beta: float, gamma: float) -> None:
        if not beta >= 0.0:
            raise ValueError(f"Invalid beta: {beta}; must be >= 0")
        if not gamma >= 0.0:
            raise ValueError(f"Invalid gamma: {gamma}; must be >= 0")
        if not problem.per_example:
            raise ValueError(f"Mechanism C needs per-example losses; problem '{problem.spec}' "
                             "has an exact loss")
        if not isinstance(base, nn.Sequential):
            raise ValueError(f"Mechanism C in the lab needs an nn.Sequential model; problem "
                             f"'{problem.spec}' builds {type(base).__name__}")
        self.problem, self.beta, self.gamma = problem, float(beta), float(gamma)
        self.layers = list(base.named_children())
        if not any(isinstance(m, ACTIVATIONS) for _, m in self.layers):
            raise ValueError(f"No hidden layers to penalise in problem '{problem.spec}'")
        self.weights = [f"{name}.weight" for name, m in self.layers if isinstance(m, WEIGHTED)]
        n = next(iter(params.values())).shape[0]
        self.init_norms = {k: params[k].detach().reshape(n, -1).norm(dim=1)
                           for k in self.weights}

    def _forward(self, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                 x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h = x
        hidden: list[Tensor] = []
        for name, module in self.layers:
            prefix = name + "."
            p = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
            b = {k[len(prefix):]: v for k, v in buffers.items() if k.startswith(prefix)}

            def layer(p_: dict[str, Tensor], b_: dict[str, Tensor], inp: Tensor,
                      module: nn.Module = module) -> Tensor:
                return functional_call(module, (p_, b_), (inp,))

            h = vmap(layer)(p, b, h) if (p or b) else module(h)
            if isinstance(module, ACTIVATIONS):
                hidden.append(h)
        return h, hidden

    def gradients(
        self,
        params: Mapping[str, Tensor],
        buffers: Mapping[str, Tensor],
        x: Tensor,
        y: Tensor,
        active: Tensor,
        *,
        batched_data: bool,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Gradients of the penalised loss, per seed, for the active seeds.

        Args:
            params: Stacked parameters (leaf tensors), [S, ...] each.
            buffers: Stacked buffers.
            x: Inputs, [B, ...] shared by the seeds or [S, B, ...] (per-seed minibatches).
            y: Targets, likewise.
            active: Bool tensor of size [S]; stopped seeds get zero gradients.
            batched_data: Whether ``x`` and ``y`` have the seeds' dim 0.

        Returns:
            ``(total, extra)``: by parameter name, d L'/d theta and the penalty's part of it
            (d (penalty + stabiliser)/d theta), each [S, ...], detached.
        """
        n = active.shape[0]
        if not batched_data:
            x, y = x.expand(n, *x.shape), y.expand(n, *y.shape)
        out, hidden = self._forward(params, buffers, x)
        data = vmap(self.problem.loss_fn)(out, y)  # [S], mean over each seed's batch
        names = list(params)
        leaves = [params[k] for k in names]
        first = torch.autograd.grad(torch.where(active, data, 0.0).sum(), [*leaves, *hidden],
                                    create_graph=True, allow_unused=True)
        data_grads, hidden_grads = first[:len(leaves)], first[len(leaves):]
        extra = data.new_zeros(n)
        for h, g in zip(hidden, hidden_grads, strict=True):
            if g is not None:
                extra = extra + self.beta * h.shape[1] * g.square().reshape(n, -1).sum(1)
        if self.gamma > 0:
            for k in self.weights:
                norm = params[k].reshape(n, -1).norm(dim=1)
                extra = extra + self.gamma * torch.relu(self.init_norms[k] - norm).square()
        extra_grads = torch.autograd.grad(torch.where(active, extra, 0.0).sum(), leaves,
                                          allow_unused=True)
        total: dict[str, Tensor] = {}
        split: dict[str, Tensor] = {}
        for k, v, gd, ge in zip(names, leaves, data_grads, extra_grads, strict=True):
            gd = torch.zeros_like(v) if gd is None else gd.detach()
            ge = torch.zeros_like(v) if ge is None else ge.detach()
            total[k], split[k] = gd + ge, ge
        return total, split
