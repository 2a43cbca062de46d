"""Mechanism A: how per-example gradients become one update direction.

Shape contract (per parameter, all tensors shaped like the parameter):

* ``grad``: the gradient the user back-propagated, ``p.grad``. For a mean-reduced loss it is
  gbar = (1/B) sum_i g_i; for a sum-reduced loss it is B * gbar. It may also hold gradient that
  is not from the data loss (the activation-gradient penalty adds its own); that part is passed
  separately as ``extra`` so the aggregation acts on the data gradient alone.
* ``sum_sq``: sum_i g_i**2 over the B examples, in the per-example-loss convention (the same
  numbers for mean and sum reduction), as recorded by :class:`synaprune.probes.PerExampleGradStats`.
* ``batch_size``: B.
* ``passes``: P, the number of backward passes (micro-batches of equal size B / P) accumulated
  into ``grad``.

Output: the direction d in the scale of ``grad``:

    d = grad + lam * (sign(gd) * R - gd),   gd = grad - extra,   R = s * sqrt(sum_sq / B)

where s = P for a mean-reduced loss and s = B for a sum-reduced one, so that R is the
root mean square r of DESIGN.md expressed in the same scale as ``grad``: example i contributes
c_i to ``grad`` (g_i / (B / P) for a mean-reduced micro-batch, g_i for a sum), and
R = sqrt(B sum_i c_i**2) >= |sum_i c_i| (Cauchy-Schwarz). So accumulating P micro-batches, with
each loss divided by P (one batch of B, as Lightning does) or not (P times that gradient), scales
d exactly as it scales ``grad``. With no ``extra`` this is
the ``blend(lam)`` rule d = gbar + lam * sign(gbar) * (r - |gbar|): lam = 0 is ``mean`` (returns
``grad`` itself, bit for bit) and lam = 1 is ``rms`` (d = sign(gbar) * r).
"""

from __future__ import annotations

import torch
from torch import Tensor

AGGREGATIONS = ("mean", "rms", "blend")


@torch.no_grad()
def aggregate(
    grad: Tensor,
    sum_sq: Tensor,
    batch_size: int,
    *,
    lam: float,
    reduction: str,
    extra: Tensor | None = None,
    passes: int = 1,
) -> Tensor:
    """Blend the mean gradient with the signed per-coordinate root mean square.

    Args:
        grad: ``p.grad``, shape [*p.shape].
        sum_sq: sum_i g_i**2, shape [*p.shape], per-example-loss convention.
        batch_size: number of examples B behind ``sum_sq``.
        lam: blend weight in [0, 1].
        reduction: ``"mean"`` or ``"sum"``, the reduction of the loss behind ``grad``.
        extra: part of ``grad`` that is not data-loss gradient (or None).
        passes: backward passes of equal size accumulated into ``grad`` (mean reduction).

    Returns:
        The direction d, shape [*p.shape]; ``grad`` itself when ``lam == 0``.
    """
    if lam == 0.0:
        return grad
    scale = float(passes) if reduction == "mean" else float(batch_size)
    # lam * R = sqrt(sum_sq * lam^2 * scale^2 / B): one multiply and one sqrt over the tensor.
    lam_rms = torch.mul(sum_sq, lam * lam * scale * scale / batch_size).sqrt_()
    if extra is None:
        # d = (1 - lam) * g + sign(g) * lam * R
        lam_rms.mul_(torch.sign(grad))
        return lam_rms if lam == 1.0 else lam_rms.add_(grad, alpha=1.0 - lam)
    data = grad - extra
    # d = grad - lam * gd + sign(gd) * lam * R
    return lam_rms.mul_(torch.sign(data)).add_(grad).add_(data, alpha=-lam)


def cancellation(grad_mean: Tensor, sum_sq: Tensor, batch_size: int) -> Tensor:
    """Per-coordinate cancellation c = |gbar| / r in [0, 1], with 0/0 defined as 1.

    Args:
        grad_mean: gbar = (1/B) sum_i g_i, any shape.
        sum_sq: sum_i g_i**2, same shape.
        batch_size: B.

    Returns:
        c, same shape; 1 where all per-example gradients agree, near 0 where they cancel.
    """
    rms = (sum_sq / batch_size).sqrt()
    c = grad_mean.abs() / rms
    # 0/0 -> 1; rounding can push |gbar| a hair above r, so clamp into [0, 1].
    return torch.where(rms == 0, torch.ones_like(c), c).clamp_(0.0, 1.0)
