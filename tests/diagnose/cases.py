"""Conditions built on purpose, and brute-force float64 references for the diagnosis."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from synaprune.probes import probes_paused

F = nn.functional
DT = torch.float64


def mlp(widths: list[int], act: type[nn.Module], seed: int = 0) -> nn.Sequential:
    """nn.Sequential of Linear and act modules, float64, PyTorch default init from ``seed``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double()


def regression(n: int = 64, d: int = 4, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Standardised inputs [n, d] and a noisy smooth target [n, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=DT)
    y = torch.sin(x[:, :1]) + 0.3 * torch.randn(n, 1, generator=g, dtype=DT)
    return x, y


def trained_minimum(seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """A 2-2-1 tanh MLP trained by LBFGS to ||g|| ~ 1e-10 on a noisy teacher of its own shape."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(100, 2, generator=g, dtype=DT)
    w = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=DT)
    v = torch.tensor([[1.0, -0.7]], dtype=DT)
    y = torch.tanh(x @ w.T) @ v.T + 0.1 * torch.randn(100, 1, generator=g, dtype=DT)
    model = mlp([2, 2, 1], nn.Tanh, seed=seed)
    with torch.no_grad():
        model[0].weight.copy_(w + 0.1 * torch.randn(2, 2, generator=g, dtype=DT))
        model[2].weight.copy_(v)
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=200, tolerance_grad=1e-12,
                            tolerance_change=0, history_size=30, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    opt.zero_grad()
    return model, x, y


def saddle() -> tuple[nn.Module, Tensor, Tensor]:
    """A 4-3-1 tanh MLP with zero hidden weights, zero output weights, distinct hidden biases and
    the optimal output bias: the gradient vanishes exactly (tanh' couples each output weight to
    its unit's input weights with opposite signs), and the Hessian is indefinite."""
    x, y = regression(n=40, d=4, seed=1)
    model = mlp([4, 3, 1], nn.Tanh)
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([0.3, -0.7, 1.1], dtype=DT))
        model[2].weight.zero_()
        model[2].bias.fill_(float(y.mean()))
    return model, x, y


def flat_params(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def dense_hessian(model: nn.Module, loss_fn, x: Tensor, y: Tensor) -> Tensor:
    """The dense Hessian [n, n] of loss_fn(model(x), y) by torch.func.hessian (tests only)."""
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())

    def f(*ps: Tensor) -> Tensor:
        return loss_fn(functional_call(model, dict(zip(names, ps, strict=True)), (x,)), y)

    with probes_paused():
        blocks = torch.func.hessian(f, argnums=tuple(range(len(params))))(*params)
    rows = [torch.cat([blocks[i][j].reshape(pi.numel(), pj.numel())
                       for j, pj in enumerate(params)], 1) for i, pi in enumerate(params)]
    return torch.cat(rows, 0)


def per_example_grads(model: nn.Module, loss_fn, x: Tensor, y: Tensor) -> Tensor:
    """[N, n]: the gradient of each example's loss, one backward pass per example."""
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        with probes_paused():
            loss_fn(model(x[i:i + 1]), y[i:i + 1]).backward()
        rows.append(torch.cat([p.grad.detach().reshape(-1).clone()
                               for p in model.parameters()]))
    model.zero_grad()
    return torch.stack(rows)


def interpolating_least_squares(scale: float, n: int = 8, d: int = 12,
                                seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """Over-parameterised least squares (n < d) at its minimum-norm interpolant: loss ~1e-30
    times scale^2, zero to rounding."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=DT)
    y = scale * torch.randn(n, 1, generator=g, dtype=DT)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return model, x, y


def interpolating_tanh(scale: float, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """A 2-16-1 tanh MLP fitted by LBFGS to 10 random targets of size ``scale`` until the loss
    stops falling (~1e-30 times scale^2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 2, generator=g, dtype=DT)
    y = scale * torch.randn(10, 1, generator=g, dtype=DT)
    model = mlp([2, 16, 1], nn.Tanh, seed=seed)
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=2000, tolerance_grad=0,
                            tolerance_change=0, history_size=50, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    opt.zero_grad()
    return model, x, y


def valley(scale: float = 1.0) -> tuple[nn.Module, Tensor, Tensor]:
    """Linear regression with feature scales 1 and 1000, targets times ``scale``: the stiff
    coordinate almost solved, the soft one far off, so the gradient points along the steep
    wall (an ill-conditioned valley at any target scale)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g, dtype=DT) * torch.tensor([1.0, 1e3], dtype=DT)
    w_star = scale * torch.tensor([[1.0, 0.002]], dtype=DT)
    y = x @ w_star.T
    model = nn.Linear(2, 1, bias=False).double()
    cov = x.T @ x / x.shape[0]
    # soft error 1; stiff error chosen so that the stiff gradient is small but dominant
    delta = scale * torch.tensor([[1.0, float(-cov[1, 0] / cov[1, 1]) + 1e-5]], dtype=DT)
    with torch.no_grad():
        model.weight.copy_(w_star + delta)
    return model, x, y


def stuck_xor() -> tuple[Any, Any, nn.Module, dict[str, list]]:
    """The README's stuck xor run: xor 2-2-1 sigmoid, gd lr=2, seed 13, 3000 steps (loss 0.126,
    gradient 4.5e-4, parameter norm 15 and growing). Returns (problem, result, model at the
    final parameters, history of the stored curve with the initial and final parameter norm)."""
    from synaprune.bench import get_method, run_seeds
    from synaprune.problems import get_problem

    problem = get_problem("xor")
    result = run_seeds(problem, get_method("gd:lr=2"), [13], 3000)[0]
    model = problem.build_model(13)
    initial = float(flat_params(model).norm())
    model.load_state_dict(result.params)
    history = {"step": [p[0] for p in result.curve], "loss": [p[1] for p in result.curve],
               "grad_norm": [p[2] for p in result.curve],
               "param_norm": [initial, float(flat_params(model).norm())]}
    return problem, result, model, history
