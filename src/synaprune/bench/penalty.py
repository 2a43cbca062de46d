"""Mechanism C (the activation-gradient penalty) for S stacked models of any architecture.

The same penalised loss as :class:`synaprune.ActivationGradientPenalty` on one model,

    L' = L + beta * (1/B) sum_i sum_l ||d l_i / d h_{l,i}||^2
         + gamma * sum_l relu(c_l - ||W_l||_F)^2,

computed for S seeds at once. The hidden activations h_l are the outputs of the hidden modules
(by default every activation module, ``synaprune.optim.penalty.ACTIVATIONS``; a problem may name
others, e.g. the Gaussian bumps of ``gaussians``). Inside ``vmap`` they are not ordinary tensors,
so a forward hook adds to each h_l a zero tensor delta_l of size [S, B, ...] that IS one: the
loss does not change, and d L / d delta_l = d L / d h_l for every seed at once (the seeds do not
interact). ``torch.autograd.grad(..., create_graph=True)`` of the seeds' summed data loss gives
those, and the penalty's math is that of ``ActivationGradientPenalty`` itself,
:func:`synaprune.optim.penalty.activation_term` and :func:`synaprune.optim.penalty.stabiliser`
with ``num_models=S``. W_l are the weights of the Linear/Conv layers, c_l their norms when the
penalty is built: the defaults of ``ActivationGradientPenalty``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from synaprune.optim.penalty import (
    ACTIVATIONS,
    WEIGHTED,
    activation_term,
    stabiliser,
    weight_norms,
)
from synaprune.problems import Problem

__all__ = ["StackedPenalty", "hidden_module_names"]


def hidden_module_names(problem: Problem, model: nn.Module) -> list[str]:
    """Names of the modules whose outputs mechanism C penalises.

    Args:
        problem: The problem (``problem.hidden_modules`` names them, or None).
        model: A model of the problem.

    Returns:
        ``problem.hidden_modules`` if given, else every activation module of ``model``.
    """
    if problem.hidden_modules is not None:
        return list(problem.hidden_modules)
    return [name for name, m in model.named_modules() if isinstance(m, ACTIVATIONS)]


class StackedPenalty:
    """Mechanism C's gradients for stacked [S, ...] parameters.

    Args:
        problem: A per-example problem (mean-reduced loss).
        base: The architecture (may be on the ``meta`` device); a private copy gets the hooks.
            Each hidden module must run once per forward pass.
        params: Stacked parameters by name, [S, ...] each, at initialisation (c_l are taken
            from them).
        beta: Weight of the activation-gradient term (>= 0).
        gamma: Weight of the stabiliser (>= 0).

    Raises:
        ValueError: For an exact-loss problem, a model without hidden modules, or a negative
            weight.
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
        self.problem, self.beta, self.gamma = problem, float(beta), float(gamma)
        self.base = copy.deepcopy(base)
        hidden = hidden_module_names(problem, self.base)
        if not hidden:
            raise ValueError(f"No hidden layers to penalise in problem '{problem.spec}'")
        # While ``_deltas`` is a list, each hidden module's output gets its delta added (in
        # forward order); while ``_shapes`` is a list, the hooks record the output shapes.
        self._deltas: Sequence[Tensor] | None = None
        self._shapes: list[torch.Size] | None = None
        self._count = 0
        for name in hidden:
            self.base.get_submodule(name).register_forward_hook(self._hook)
        self.n_hidden = len(hidden)
        self.weights = [f"{name}.weight" for name, m in self.base.named_modules()
                        if isinstance(m, WEIGHTED)]
        n = next(iter(params.values())).shape[0]
        self.init_norms = weight_norms([params[k] for k in self.weights], num_models=n)

    def select(self, index: Tensor) -> None:
        """Keep only the seeds at positions ``index`` (their c_l), as the runner frees the
        slots of stopped seeds."""
        self.init_norms = [c[index] for c in self.init_norms]

    def _hook(self, _module: nn.Module, _inputs: Any, output: Tensor) -> Tensor | None:
        if self._shapes is not None:
            self._shapes.append(output.shape)
            return None
        if self._deltas is None:
            return None
        delta = self._deltas[self._count]
        self._count += 1
        return output + delta

    def _data_loss(self, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                   x: Tensor, y: Tensor, deltas: Sequence[Tensor]) -> Tensor:
        """One seed's mean data loss with the deltas added to its hidden activations."""
        self._deltas, self._count = deltas, 0
        try:
            out = functional_call(self.base, (dict(params), dict(buffers)), (x,))
        finally:
            self._deltas = None
        return self.problem.loss_fn(out, y)

    def _hidden_shapes(self, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                       x: Tensor) -> list[torch.Size]:
        """Shapes [B, ...] of one seed's hidden activations for inputs x of size [B, ...]."""
        self._shapes = []
        try:
            with torch.no_grad():
                one = {k: v[0] for k, v in params.items()}
                functional_call(self.base, (one, {k: v[0] for k, v in buffers.items()}), (x,))
            shapes = self._shapes
        finally:
            self._shapes = None
        if len(shapes) != self.n_hidden:
            raise ValueError(f"Each hidden module must run once per forward pass; "
                             f"{self.n_hidden} modules produced {len(shapes)} outputs")
        return shapes

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
        shapes = self._hidden_shapes(params, buffers, x[0] if batched_data else x)
        first_leaf = next(iter(params.values()))
        deltas = [torch.zeros(n, *shape, dtype=first_leaf.dtype, requires_grad=True)
                  for shape in shapes]
        data = vmap(self._data_loss, in_dims=(0, 0, 0 if batched_data else None,
                                               0 if batched_data else None, 0))(
            params, buffers, x, y, deltas)  # [S], mean over each seed's batch
        hidden = deltas
        names = list(params)
        leaves = [params[k] for k in names]
        first = torch.autograd.grad(torch.where(active, data, 0.0).sum(), [*leaves, *hidden],
                                    create_graph=True, allow_unused=True)
        data_grads, hidden_grads = first[:len(leaves)], first[len(leaves):]
        # [S]: each seed's penalty and stabiliser (the seeds' mean-reduced losses)
        extra = self.beta * activation_term(hidden_grads, num_models=n).to(data)
        if self.gamma > 0:
            extra = extra + stabiliser([params[k] for k in self.weights], self.init_norms,
                                       self.gamma, num_models=n).to(data)
        extra_grads = torch.autograd.grad(torch.where(active, extra, 0.0).sum(), leaves,
                                          allow_unused=True)
        total: dict[str, Tensor] = {}
        split: dict[str, Tensor] = {}
        for k, v, gd, ge in zip(names, leaves, data_grads, extra_grads, strict=True):
            gd = torch.zeros_like(v) if gd is None else gd.detach()
            ge = torch.zeros_like(v) if ge is None else ge.detach()
            total[k], split[k] = gd + ge, ge
        return total, split
