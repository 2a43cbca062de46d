"""Mechanism C: the activation-gradient penalty, with weight stabilisation.

    loss' = L + beta * (1/B) sum_i sum_l ||d l_i / d h_{l,i}||^2
              + gamma * sum_l relu(c_l - ||W_l||_F)^2

h_l are hidden-layer outputs (captured by forward hooks), c_l each weight's Frobenius norm when the
penalty was created. Per-example activation gradients do not cancel across the batch the way
per-example parameter gradients do, so the penalty keeps producing gradient where the batch
gradient is near zero; the stabiliser stops the penalty from shrinking the weights to nothing
(Drucker & LeCun 1992 saw that shrinkage with double backprop).

For a feedforward net (no coupling between examples, e.g. no BatchNorm in training mode) the
gradient of a mean-reduced loss w.r.t. h_{l,i} is (1/B) d l_i / d h_{l,i}, so the per-example sum
is B**2 * ||dL/dh_l||^2 and one batched double backward suffices.

All gradients are computed when the penalised loss is built: one first-order pass of the data loss
(with ``create_graph=True``, so per-example statistics of mechanism A are those of the data loss)
and one double-backward pass of the penalty. The returned loss feeds their sum straight to the
parameters, and the penalty's share of ``p.grad`` is recorded in ``p.grad_extra`` so the optimizer
can aggregate the data gradient alone.

The penalty's math has one implementation, :func:`activation_term` and :func:`stabiliser`, for
one model or for S stacked models (``num_models=S``, the stacked-mode convention of
:mod:`synaprune.optim`); :class:`ActivationGradientPenalty` and the lab's seed-batched
:class:`synaprune.bench.penalty.StackedPenalty` both call them.

The per-example statistics of that first pass are staged, not written to the parameters: they
belong to the backward pass of the returned loss, which adds them (with ``grad_extra``) exactly
when it accumulates into ``.grad``. So any order of ``penalty(loss)``, ``zero_grad()`` and
``backward()`` works, including Lightning's (``training_step`` builds the loss, then
``zero_grad``, then ``backward``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from synaprune.probes import _fields as fields
from synaprune.probes import probes_paused

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus,
    nn.Hardtanh, nn.Mish,
)
WEIGHTED: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _per_model(t: Tensor, num_models: int | None) -> Tensor:
    """``t`` flattened per model: [n] for one model, [S, n] for S stacked models."""
    return t.reshape(-1) if num_models is None else t.reshape(num_models, -1)


def activation_term(grads: Sequence[Tensor | None], *, reduction: str = "mean",
                    num_models: int | None = None) -> Tensor:
    """(1/B) sum_i sum_l ||d l_i / d h_{l,i}||^2 from the batched gradients dL/dh_l.

    For a feedforward net example i's loss reaches only its own h_{l,i}, so one backward pass of
    the batch loss L gives every per-example activation gradient: for a mean-reduced loss
    dL/dh_{l,i} = (1/B) dl_i/dh_{l,i}, hence (1/B) sum_i ||dl_i/dh_{l,i}||^2 = B ||dL/dh_l||^2.
    For a sum-reduced loss the term is B times larger, as the loss is, sum_i ||dl_i/dh_{l,i}||^2
    = ||dL/dh_l||^2, so both reductions give the same penalised trajectory up to that factor.

    Args:
        grads: dL/dh_l per hidden layer (None: the loss does not reach that layer), each of size
            [B, ...] for one model, or [S, B, ...] for S stacked models, L then being the sum of
            the models' losses (the models do not interact, so model s's slice is its own).
        reduction: ``"mean"`` or ``"sum"``, the reduction of each model's data loss over its
            batch.
        num_models: S for stacked models, None for one.

    Returns:
        A 0-d tensor, or a tensor of size [S] (one term per model); zeros if every grad is None.
    """
    batch_dim = 0 if num_models is None else 1
    total: Tensor | None = None
    for g in grads:
        if g is None:
            continue
        scale = g.shape[batch_dim] if reduction == "mean" else 1.0
        term = scale * _per_model(g, num_models).square().sum(-1)
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(() if num_models is None else (num_models,))
    return total


def weight_norms(weights: Sequence[Tensor], *, num_models: int | None = None) -> list[Tensor]:
    """The Frobenius norms ||W_l||_F (detached): 0-d tensors, or [S] for stacked models; the
    stabiliser's c_l when taken at initialisation."""
    return [torch.linalg.vector_norm(_per_model(w.detach(), num_models), dim=-1)
            for w in weights]


def stabiliser(weights: Sequence[Tensor], init_norms: Sequence[Tensor | float], gamma: float, *,
               num_models: int | None = None) -> Tensor:
    """gamma * sum_l relu(c_l - ||W_l||_F)^2: holds each weight's norm at least at c_l.

    Args:
        weights: the W_l, each [...] for one model or [S, ...] for S stacked models.
        init_norms: the c_l, floats or 0-d tensors for one model, [S] tensors for stacked ones
            (see :func:`weight_norms`).
        gamma: the weight of the stabiliser (>= 0).
        num_models: S for stacked models, None for one.

    Returns:
        A 0-d tensor, or [S] (one per model); zeros without weights (e.g. a sum of Gaussians).
    """
    if not weights:
        return torch.zeros(() if num_models is None else (num_models,))
    terms = [torch.relu(c - torch.linalg.vector_norm(_per_model(w, num_models), dim=-1)).square()
             for w, c in zip(weights, init_norms, strict=True)]
    return gamma * torch.stack(terms).sum(0)


class _FeedGrad(torch.autograd.Function):
    """Returns ``value``; its backward hands precomputed gradients to ``params``.

    ``grads`` are the full gradients, ``extras`` the parts of them that are not data-loss
    gradient, recorded in ``p.grad_extra`` for the optimizer's aggregation; ``stage`` holds the
    data loss's per-example statistics, added to the parameters in the same backward pass.
    """

    @staticmethod
    def forward(ctx: Any, value: Tensor, grads: list[Tensor | None],
                extras: list[Tensor | None], stage: Any, *params: Tensor) -> Tensor:
        ctx.grads, ctx.extras, ctx.stage, ctx.params = grads, extras, stage, params
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        out: list[Tensor | None] = []
        scale: Tensor | float = 1.0 if bool(grad_out == 1.0) else grad_out
        for p, g, e in zip(ctx.params, ctx.grads, ctx.extras, strict=True):
            if g is not None:
                fields.commit(p, ctx.stage, extra=None if e is None else e * grad_out,
                              scale=scale)
            out.append(None if g is None else g * grad_out)
        return (None, None, None, None, *out)


class ActivationGradientPenalty:
    """Builds the penalised loss of mechanism C for a model.

    Args:
        model: the network.
        beta: weight of the activation-gradient term (>= 0).
        gamma: weight of the stabiliser (>= 0); 0 disables it.
        layers: modules whose outputs are the hidden activations h_l. Default: every activation
            module (ReLU, Tanh, Sigmoid, ...) in ``model``.
        weights: weight tensors W_l to stabilise. Default: the weights of every Linear/Conv layer.
        reduction: ``"mean"`` or ``"sum"``, the reduction of the data loss passed to ``__call__``.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
        >>> penalty = ActivationGradientPenalty(model, beta=1e-2, gamma=1.0)
        >>> x, y = torch.randn(8, 2), torch.randn(8, 1)
        >>> loss = penalty(nn.functional.mse_loss(model(x), y))
        >>> loss.backward()
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        beta: float,
        gamma: float = 0.0,
        layers: Sequence[nn.Module] | None = None,
        weights: Iterable[Tensor] | None = None,
        reduction: str = "mean",
    ) -> None:
        if not beta >= 0.0:
            raise ValueError(f"Invalid beta: {beta}; must be >= 0")
        if not gamma >= 0.0:
            raise ValueError(f"Invalid gamma: {gamma}; must be >= 0")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"Invalid reduction: {reduction!r}; expected 'mean' or 'sum'")
        if layers is None:
            layers = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
        if not layers:
            raise ValueError("No hidden layers to penalise: pass layers=[...] (modules whose "
                             "outputs are hidden activations)")
        if weights is None:
            weights = [m.weight for m in model.modules() if isinstance(m, WEIGHTED)]
        self.beta, self.gamma, self.reduction = float(beta), float(gamma), reduction
        self.weights = list(weights)
        self.init_norms = [float(w.detach().norm()) for w in self.weights]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._captured: list[Tensor] = []
        self._handles = [m.register_forward_hook(self._capture) for m in layers]
        self.last_penalty = 0.0
        self.last_stabiliser = 0.0

    def _capture(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        if torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad:
            self._captured.append(output)

    def remove(self) -> None:
        """Remove the forward hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._captured.clear()

    def stabiliser(self) -> Tensor:
        """gamma * sum_l relu(c_l - ||W_l||_F)^2, a scalar tensor (see :func:`stabiliser`)."""
        return stabiliser(self.weights, self.init_norms, self.gamma).to(self.params[0])

    def _activation_term(self, hidden: Sequence[Tensor],
                         grads: Sequence[Tensor | None]) -> Tensor:
        """(1/B) sum_i sum_l ||d l_i / d h_{l,i}||^2, in the loss's scale (see
        :func:`activation_term`)."""
        return activation_term(grads, reduction=self.reduction).to(hidden[0])

    def __call__(self, loss: Tensor) -> Tensor:
        """Return loss + penalty + stabiliser for the forward pass that produced ``loss``.

        All gradients are computed here, in one first-order pass with ``create_graph=True`` (it
        yields the data gradient, the activation gradients and, for an attached
        :class:`~synaprune.PerExampleGradStats`, the data loss's per-example statistics) and one
        double-backward pass for the penalty. Back-propagating the returned scalar then only
        hands those gradients to the parameters (scaled by the incoming gradient), instead of
        traversing the network a third time.

        Args:
            loss: scalar data loss of the latest forward pass of the model.

        Returns:
            A scalar tensor equal to the penalised loss whose gradient is the data gradient plus
            the penalty's gradient; the penalty's part is also recorded in ``p.grad_extra``.
        """
        hidden, self._captured = self._captured, []
        if not hidden:
            raise RuntimeError("No hidden activations were captured: run the model's forward "
                               "pass with gradients enabled before calling the penalty")
        n = len(self.params)
        with fields.staged() as stage:  # statistics for the backward of the returned loss
            first = torch.autograd.grad(loss, [*self.params, *hidden], create_graph=True,
                                        allow_unused=True)
        data_grads, hidden_grads = first[:n], first[n:]
        with probes_paused():
            penalty = self.beta * self._activation_term(hidden, hidden_grads)
            stab = self.stabiliser() if self.gamma > 0 else loss.new_zeros(())
            extra = penalty + stab
            extra_grads = (torch.autograd.grad(extra, self.params, allow_unused=True)
                           if extra.requires_grad else [None] * n)
        self.last_penalty, self.last_stabiliser = float(penalty.detach()), float(stab.detach())
        total, split = [], []
        for _p, gd, ge in zip(self.params, data_grads, extra_grads, strict=True):
            gd = None if gd is None else gd.detach()
            ge = None if ge is None else ge.detach()
            total.append(ge if gd is None else gd if ge is None else gd + ge)
            split.append(ge)
        value = (loss + extra).detach()
        return _FeedGrad.apply(value, total, split, stage, *self.params)
