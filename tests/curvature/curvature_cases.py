"""Small float64 problems with readable ids, and their dense Hessians (the brute-force reference).

The reference never touches synaprune: ``torch.func.hessian`` of the loss as a function of one
flat parameter vector, on the whole dataset at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

DTYPE = torch.float64


@dataclass
class Problem:
    """A model, a mean-reduced loss and one batch of data."""

    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    x: Tensor
    y: Tensor


def _mse_manual(out: Tensor, y: Tensor) -> Tensor:
    return ((out - y) ** 2).mean()


def tanh_mlp_mse(seed: int = 0) -> Problem:
    g = torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).to(DTYPE)
    x = torch.randn(24, 4, generator=g, dtype=DTYPE)
    y = torch.randn(24, 2, generator=g, dtype=DTYPE)
    return Problem(model, F.mse_loss, x, y)


def tanh_mlp_manual_mse(seed: int = 1) -> Problem:
    p = tanh_mlp_mse(seed)
    return Problem(p.model, _mse_manual, p.x, p.y)


def relu_mlp_ce(seed: int = 2) -> Problem:
    g = torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).to(DTYPE)
    x = torch.randn(30, 5, generator=g, dtype=DTYPE)
    y = torch.randint(0, 3, (30,), generator=g)
    return Problem(model, F.cross_entropy, x, y)


def tanh_mlp_ce(seed: int = 3) -> Problem:
    g = torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 4)
    ).to(DTYPE)
    x = torch.randn(40, 3, generator=g, dtype=DTYPE)
    y = torch.randint(0, 4, (40,), generator=g)
    return Problem(model, F.cross_entropy, x, y)


def conv_ce(seed: int = 4) -> Problem:
    g = torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).to(
        DTYPE
    )
    x = torch.randn(12, 1, 6, 6, generator=g, dtype=DTYPE)
    y = torch.randint(0, 3, (12,), generator=g)
    return Problem(model, F.cross_entropy, x, y)


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "tanh-mlp-mse": tanh_mlp_mse,
    "tanh-mlp-manual-mse": tanh_mlp_manual_mse,
    "relu-mlp-ce": relu_mlp_ce,
    "tanh-mlp-ce": tanh_mlp_ce,
    "conv-ce": conv_ce,
}


def flat_params(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def loss_of_flat(problem: Problem, x: Any = None, y: Any = None) -> Callable[[Tensor], Tensor]:
    """The loss as a function of one flat parameter vector (layout: model.parameters())."""
    model = problem.model
    x = problem.x if x is None else x
    y = problem.y if y is None else y
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    numels = [p.numel() for p in model.parameters()]

    def f(flat: Tensor) -> Tensor:
        tensors = [c.view(s) for c, s in zip(flat.split(numels), shapes, strict=True)]
        out = functional_call(model, dict(zip(names, tensors, strict=True)), (x,))
        return problem.loss_fn(out, y)

    return f


def dense_hessian(problem: Problem) -> Tensor:
    """The [n, n] Hessian of the loss over the whole batch, by torch.func.hessian."""
    return torch.func.hessian(loss_of_flat(problem))(flat_params(problem.model))


def dense_gradient(problem: Problem) -> Tensor:
    return torch.func.grad(loss_of_flat(problem))(flat_params(problem.model))


class QuadraticSaddle(nn.Module):
    """A "model" whose mean loss is 0.5 * theta^T A theta: its Hessian is A, whatever the data.

    A = Q diag(eigenvalues) Q^T with a random orthogonal Q, so the saddle's index (the number of
    negative eigenvalues) is known by construction.
    """

    def __init__(self, eigenvalues: Tensor, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = eigenvalues.shape[0]
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DTYPE))
        self.register_buffer("a", q @ torch.diag(eigenvalues.to(DTYPE)) @ q.T)
        self.theta = nn.Parameter(torch.randn(n, generator=g, dtype=DTYPE))

    def forward(self, x: Tensor) -> Tensor:
        value = 0.5 * self.theta @ self.a @ self.theta
        return value * torch.ones(x.shape[0], dtype=DTYPE)  # the same "loss" for every example


def mean_output(out: Tensor, y: Tensor) -> Tensor:
    return out.mean()
