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
        """gamma * sum_l relu(c_l - ||W_l||_F)^2, a scalar tensor."""
        terms = [torch.relu(c - w.norm()) ** 2 for w, c in zip(self.weights, self.init_norms,
                                                                 strict=True)]
        if not terms:  # no Linear/Conv weight (e.g. a sum of Gaussians): nothing to hold
            return self.params[0].new_zeros(())
        return self.gamma * torch.stack(terms).sum()

    def _activation_term(self, hidden: Sequence[Tensor],
                         grads: Sequence[Tensor | None]) -> Tensor:
        """(1/B) sum_i sum_l ||d l_i / d h_{l,i}||^2 from the batched gradients dL/dh_l.

        In the scale of the loss: for a sum-reduced loss the term is B times larger, as the loss
        is, so mean and sum reduction give the same penalised trajectory up to that factor.
        """
        total = hidden[0].new_zeros(())
        for h, g in zip(hidden, grads, strict=True):
            if g is None:
                continue
            # mean: dL/dh_i = (1/B) dl_i/dh_i, so (1/B) sum_i ||dl_i/dh_i||^2 = B ||dL/dh||^2.
            # sum: the term is B times larger, like the loss itself: sum_i ||dl_i/dh_i||^2.
            scale = h.shape[0] if self.reduction == "mean" else 1.0
            total = total + scale * g.pow(2).sum()
        return total

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
