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


def identical_units(
    hidden: int, copies: int, d_in: int, d_out: int, seed: int, num_examples: int = 40
) -> Problem:
    """A tanh MLP d_in-hidden-d_out whose first ``copies`` hidden units are identical (same
    incoming weights and bias, same outgoing weights).

    Permuting those units leaves the loss unchanged, so the Hessian commutes with the
    permutation and has eigenvalues of multiplicity copies - 1 (the antisymmetric combinations
    of the copies), the textbook source of repeated Hessian eigenvalues. The parameter vector is
    itself symmetric, so it is orthogonal to every antisymmetric eigenvector.
    """
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).to(DTYPE)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DTYPE))
        model[0].weight[1:copies] = model[0].weight[0]
        model[0].bias[1:copies] = model[0].bias[0]
        model[2].weight[:, 1:copies] = model[2].weight[:, :1]
    x = torch.randn(num_examples, d_in, generator=g, dtype=DTYPE)
    y = torch.randn(num_examples, d_out, generator=g, dtype=DTYPE)
    return Problem(model, F.mse_loss, x, y)


def four_identical_tanh_units() -> Problem:
    """The issue's case: 4 identical units (of 4), n = 41; eigenvalues of multiplicity 3."""
    return identical_units(hidden=4, copies=4, d_in=8, d_out=1, seed=0)


def three_identical_among_nine() -> Problem:
    """The issue's second case: 3 identical units among 9, n = 119; multiplicity 2."""
    return identical_units(hidden=9, copies=3, d_in=10, d_out=2, seed=0)


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "tanh-mlp-mse": tanh_mlp_mse,
    "tanh-mlp-manual-mse": tanh_mlp_manual_mse,
    "relu-mlp-ce": relu_mlp_ce,
    "tanh-mlp-ce": tanh_mlp_ce,
    "conv-ce": conv_ce,
    "four-identical-tanh-units": four_identical_tanh_units,
    "three-identical-among-nine": three_identical_among_nine,
}


def with_spectrum(eigenvalues: list[float], seed: int = 0) -> Tensor:
    """A dense symmetric Q diag(eigenvalues) Q^T with a random orthogonal Q (float64)."""
    n = len(eigenvalues)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DTYPE))
    h = q @ torch.diag(torch.tensor(eigenvalues, dtype=DTYPE)) @ q.T
    return (h + h.T) / 2


def _bulk(count: int, low: float, high: float, seed: int) -> list[float]:
    """``count`` distinct values in (low, high), randomly spaced: the bulk of a spectrum."""
    g = torch.Generator().manual_seed(seed)
    return torch.empty(count, dtype=DTYPE).uniform_(low, high, generator=g).tolist()


# Dense operators (n = 200) with exactly repeated extreme eigenvalues, a few distinct outliers
# and a distinct bulk, the shape of a Hessian spectrum: a single Krylov sequence never becomes
# invariant and cannot see the copies.
REPEATED_SPECTRA: dict[str, Callable[[], Tensor]] = {
    # the largest eigenvalue three times
    "top-triple": lambda: with_spectrum(
        [7.0] * 3 + [5.5, 4.8, 4.1] + _bulk(194, -1.0, 3.0, 1), seed=1
    ),
    # a diagonal operator (the standard basis is its eigenbasis) with a triple at each end
    "diagonal-triples": lambda: torch.diag(
        torch.tensor(
            [-2.0] * 3 + [-1.7, -1.45] + _bulk(190, -1.0, 2.5, 2) + [3.1, 3.5] + [4.0] * 3,
            dtype=DTYPE,
        )
    ),
    # a saddle: repeated negative eigenvalues (-3 four times, -1 twice)
    "saddle-repeated-negatives": lambda: with_spectrum(
        [-3.0] * 4 + [-1.0] * 2 + [-0.6] + _bulk(189, 0.05, 3.0, 3) + [4.0, 5.5, 7.0, 9.0],
        seed=3,
    ),
    # multiplicity 5 at the bottom, above any small block; a double at the top
    "quintuple-bottom": lambda: with_spectrum(
        [-1.0] * 5 + [-0.7, -0.55] + _bulk(187, 0.0, 2.0, 4) + [2.8, 3.3, 3.9, 4.4, 5.0, 5.0],
        seed=4,
    ),
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
