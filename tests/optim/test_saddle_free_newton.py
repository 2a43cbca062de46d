"""SaddleFreeNewton against dense references (float64): the full-space step, the Krylov-subspace
step, escaping a saddle that attracts Newton, stacked equals separate, validation, state."""

from __future__ import annotations

import doctest
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.func import hessian

import synaprune
import synaprune.optim.saddle_free_newton as sfn_module
from synaprune.optim import SaddleFreeNewton

DT = torch.float64


class _KrylovNewton(SaddleFreeNewton):
    """Plain damped Newton in the same Krylov subspace: theta instead of |theta|."""

    def _curvature(self, theta: Tensor) -> Tensor:
        return theta


def _sym(eigenvalues: list[float], seed: int) -> Tensor:
    """A symmetric matrix with these eigenvalues and a random orthonormal eigenbasis."""
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed),
                                       dtype=DT))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=DT)) @ q.T


def _dense_sfn(h: Tensor, g: Tensor, lr: float, damping: float) -> Tensor:
    """-lr (|H| + damping I)^{-1} g from the dense eigendecomposition."""
    lam, u = torch.linalg.eigh(h)
    return -lr * u @ ((u.T @ g) / (lam.abs() + damping))


def _rel(a: Tensor, b: Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


# --------------------------------------------------------------------------- (a) full space

@pytest.mark.parametrize(("lr", "damping"), [(1.0, 1e-3), (0.7, 0.05)])
def test_full_krylov_step_equals_dense_saddle_free_newton(lr: float, damping: float) -> None:
    """krylov_dim = n: the step is -lr (|H| + damping I)^{-1} g of the dense Hessian."""
    a = _sym([-3.0, -1.0, -0.2, 0.5, 2.0, 4.0], seed=0)  # indefinite, distinct eigenvalues
    b = torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=DT)
    w0 = torch.randn(6, generator=torch.Generator().manual_seed(2), dtype=DT)

    def f(w: Tensor) -> Tensor:
        return 0.5 * w @ a @ w + b @ w + 0.1 * (w**4).sum()  # non-quadratic: H depends on w

    w = w0.clone().requires_grad_(True)
    opt = SaddleFreeNewton([w], lr=lr, damping=damping, krylov_dim=6)
    loss = opt.step(lambda: f(w))
    h, g = hessian(f)(w0), torch.func.grad(f)(w0)
    assert bool((torch.linalg.eigvalsh(h) < 0).any())  # the reference point is indefinite
    assert _rel(w.detach() - w0, _dense_sfn(h, g, lr, damping)) < 1e-10
    assert loss.item() == pytest.approx(f(w0).item(), rel=1e-14)
    assert torch.allclose(w.grad, g, rtol=1e-14, atol=0)  # p.grad is the gradient at w0
    # k = n: the Ritz values are the Hessian's eigenvalues.
    assert int(opt.krylov_dims) == 6
    assert torch.allclose(opt.ritz_values, torch.linalg.eigvalsh(h), rtol=0, atol=1e-10)
    # It is not plain Newton: H is indefinite, so the two steps differ.
    newton = -lr * torch.linalg.solve(h + damping * torch.eye(6, dtype=DT), g)
    assert _rel(w.detach() - w0, newton) > 0.1


def test_breakdown_stops_early_and_is_exact() -> None:
    """A quadratic with 3 distinct eigenvalues: the Krylov space from g closes after 3 vectors,
    the optimizer stops there (no NaN from the zero residual) and the step is the full one."""
    a = _sym([-2.0, -2.0, 1.0, 1.0, 1.0, 3.0], seed=3)
    b = torch.randn(6, generator=torch.Generator().manual_seed(4), dtype=DT)
    w0 = torch.randn(6, generator=torch.Generator().manual_seed(5), dtype=DT)
    w = w0.clone().requires_grad_(True)
    opt = SaddleFreeNewton([w], lr=1.0, damping=0.1, krylov_dim=6)
    opt.step(lambda: 0.5 * w @ a @ w + b @ w)
    assert int(opt.krylov_dims) == 3
    assert torch.allclose(opt.ritz_values[:3], torch.tensor([-2.0, 1.0, 3.0], dtype=DT),
                          atol=1e-12)
    assert torch.isnan(opt.ritz_values[3:]).all()
    g = a @ w0 + b
    assert _rel(w.detach() - w0, _dense_sfn(a, g, 1.0, 0.1)) < 1e-10


# --------------------------------------------------------------------------- (b) subspace

def _mlp_problem(seed: int) -> tuple[Tensor, Callable[[Tensor], Tensor], list[torch.Size]]:
    """A 3-5-2 tanh MLP (32 parameters) on 10 random points: flat start and flat loss."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 3, generator=gen, dtype=DT)
    y = torch.randn(10, 2, generator=gen, dtype=DT)
    shapes = [torch.Size([3, 5]), torch.Size([5]), torch.Size([5, 2]), torch.Size([2])]
    theta0 = torch.randn(sum(s.numel() for s in shapes), generator=gen, dtype=DT)

    def loss(theta: Tensor) -> Tensor:
        w1, b1, w2, b2 = (c.reshape(s) for c, s in zip(
            theta.split([s.numel() for s in shapes]), shapes, strict=True))
        return ((torch.tanh(x @ w1 + b1) @ w2 + b2 - y) ** 2).mean()

    return theta0, loss, shapes


@pytest.mark.parametrize("k", [1, 3, 6])
def test_step_is_the_dense_step_restricted_to_the_krylov_subspace(k: int) -> None:
    theta0, f, shapes = _mlp_problem(seed=0)
    n = theta0.numel()
    params = [c.reshape(s).clone().requires_grad_(True)
              for c, s in zip(theta0.split([s.numel() for s in shapes]), shapes, strict=True)]
    opt = SaddleFreeNewton(params, lr=0.5, damping=0.2, krylov_dim=k)
    opt.step(lambda: f(torch.cat([p.reshape(-1) for p in params])))
    got = torch.cat([p.detach().reshape(-1) for p in params]) - theta0

    # Reference: the Krylov basis by QR of [g, Hg, ..., H^{k-1} g] (columns normalised) from
    # the dense Hessian, then the saddle-free step of the compressed Hessian P^T H P.
    h, g = hessian(f)(theta0), torch.func.grad(f)(theta0)
    cols = [g / g.norm()]
    for _ in range(k - 1):
        c = h @ cols[-1]
        cols.append(c / c.norm())
    p, _ = torch.linalg.qr(torch.stack(cols, dim=1))
    ref = p @ _dense_sfn(p.T @ h @ p, p.T @ g, 0.5, 0.2)
    assert _rel(got, ref) < 1e-9
    assert int(opt.krylov_dims) == k
    # k < n really restricts the step: it is not the full-space step.
    assert k < n and _rel(got, _dense_sfn(h, g, 0.5, 0.2)) > 1e-3


# --------------------------------------------------------------------------- (c) saddles

def _saddle_run(opt_cls: type[SaddleFreeNewton], dim: int, steps: int) -> Tensor:
    """f(w) = sum_{i<dim/2} w_i^2 + sum_{i>=dim/2} (w_i^4/4 - w_i^2/2): a saddle at 0 (value 0,
    dim/2 negative directions), minima at w_i = +-1 on the second half (value -dim/8). Start:
    1 on the first half, 1e-3 on the second (near the saddle, off it)."""
    half = dim // 2
    w = torch.cat([torch.ones(half, dtype=DT), torch.full((dim - half,), 1e-3, dtype=DT)])
    w.requires_grad_(True)

    def f() -> Tensor:
        return (w[:half] ** 2).sum() + (w[half:] ** 4 / 4 - w[half:] ** 2 / 2).sum()

    opt = opt_cls([w], lr=1.0, damping=0.01, krylov_dim=dim)
    for _ in range(steps):
        opt.step(f)
    return w.detach()


@pytest.mark.parametrize("dim", [2, 6])
def test_escapes_the_saddle_that_attracts_newton(dim: int) -> None:
    half = dim // 2
    saddle_value, minimum = 0.0, -(dim - half) / 4

    def value(w: Tensor) -> float:
        return float((w[:half] ** 2).sum() + (w[half:] ** 4 / 4 - w[half:] ** 2 / 2).sum())

    sfn = _saddle_run(SaddleFreeNewton, dim, 40)
    newton = _saddle_run(_KrylovNewton, dim, 40)
    # Saddle-free Newton goes down the negative-curvature directions to the minima ...
    assert value(sfn) < saddle_value - 0.1
    assert value(sfn) == pytest.approx(minimum, abs=1e-10)
    assert torch.allclose(sfn[half:].abs(), torch.ones(dim - half, dtype=DT), atol=1e-8)
    # ... while Newton in the same subspace, |theta| replaced by theta, converges to the saddle.
    assert torch.linalg.vector_norm(newton) < 1e-8
    assert value(newton) == pytest.approx(saddle_value, abs=1e-12)


# --------------------------------------------------------------------------- (d) stacked

def _stacked_quadratics(s: int) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Per model: A_s (model 0: 2 distinct eigenvalues, so its Krylov space breaks down early;
    model 1: generic indefinite; model 2: starts at its stationary point, zero gradient)."""
    a = torch.stack([_sym([-1.0, -1.0, -1.0, 2.0, 2.0], seed=10),
                     _sym([-2.0, -0.5, 0.3, 1.0, 5.0], seed=11),
                     _sym([-1.0, 0.5, 1.0, 2.0, 3.0], seed=12)])[:s]
    gen = torch.Generator().manual_seed(13)
    b = torch.randn(s, 5, generator=gen, dtype=DT)
    w0 = torch.randn(s, 5, generator=gen, dtype=DT)
    if s >= 3:  # model 2 at its stationary point 0: g = A 0 + 0 = 0 exactly
        w0[2], b[2] = 0.0, 0.0
    return list(a), list(b), w0


def _quartic_terms(w: Tensor) -> Tensor:
    return 0.05 * (w**4).sum(-1)


def test_stacked_quadratics_equal_separate_with_breakdown_and_zero_gradient() -> None:
    a, b, w0 = _stacked_quadratics(3)
    big_a, big_b = torch.stack(a), torch.stack(b)
    stacked = w0.clone().requires_grad_(True)
    opt = SaddleFreeNewton([stacked], lr=0.8, damping=0.1, krylov_dim=5, num_models=3)

    def closure() -> Tensor:  # the sum of the 3 models' losses
        quad = 0.5 * torch.einsum("si,sij,sj->s", stacked, big_a, stacked)
        return (quad + (big_b * stacked).sum(1)).sum()

    singles = [w0[m].clone().requires_grad_(True) for m in range(3)]
    opts = [SaddleFreeNewton([w], lr=0.8, damping=0.1, krylov_dim=5) for w in singles]
    for step in range(4):
        opt.step(closure)
        for m, (w, o) in enumerate(zip(singles, opts, strict=True)):
            o.step(lambda w=w, m=m: 0.5 * w @ a[m] @ w + b[m] @ w)
            assert torch.allclose(stacked[m].detach(), w.detach(), rtol=0, atol=1e-10)
            assert torch.allclose(stacked.grad[m], w.grad, rtol=0, atol=1e-10)
        if step == 0:
            assert opt.krylov_dims.tolist() == [2, 5, 0]
            assert [int(o.krylov_dims) for o in opts] == [2, 5, 0]
    assert torch.equal(stacked[2].detach(), w0[2])  # zero gradient: zero step, no NaN
    assert torch.isfinite(stacked).all()
    assert (stacked[1].detach() - w0[1]).abs().max() > 0.1  # the others really moved


def _stacked_mlp_loss(x: Tensor, y: Tensor) -> Callable[..., Tensor]:
    def loss(w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        """Stacked [S, ...] parameters -> [S] losses (or plain parameters -> a scalar)."""
        hidden = torch.tanh(torch.matmul(x, w1) + b1.unsqueeze(-2))
        out = torch.matmul(hidden, w2) + b2.unsqueeze(-2)
        return ((out - y) ** 2).mean(dim=(-2, -1))
    return loss


@pytest.mark.parametrize("options", [dict(krylov_dim=4), dict(krylov_dim=40, max_step=0.3)],
                         ids=["k4", "k40-capped"])
def test_stacked_mlps_equal_separate(options: dict) -> None:
    s = 3
    gen = torch.Generator().manual_seed(20)
    x = torch.randn(12, 3, generator=gen, dtype=DT)
    y = torch.randn(12, 2, generator=gen, dtype=DT)
    shapes = [(3, 6), (6,), (6, 2), (2,)]  # 38 parameters per model
    init = [torch.randn(s, *sh, generator=gen, dtype=DT) for sh in shapes]
    loss = _stacked_mlp_loss(x, y)
    stacked = [t.clone().requires_grad_(True) for t in init]
    opt = SaddleFreeNewton(stacked, lr=0.5, damping=0.05, num_models=s, **options)
    singles = [[t[m].clone().requires_grad_(True) for t in init] for m in range(s)]
    opts = [SaddleFreeNewton(ps, lr=0.5, damping=0.05, **options) for ps in singles]
    for _ in range(6):
        total = opt.step(lambda: loss(*stacked).sum())
        parts = [o.step(lambda ps=ps: loss(*ps)) for ps, o in zip(singles, opts, strict=True)]
        assert total.item() == pytest.approx(sum(p.item() for p in parts), abs=1e-12)
        for m in range(s):
            for big, small in zip(stacked, singles[m], strict=True):
                assert torch.allclose(big[m].detach(), small.detach(), rtol=0, atol=1e-10)
    if "max_step" in options:  # k capped at n = 38, and the cap is active
        assert opt.krylov_dims.tolist() == [38] * s
    losses = loss(*[t.detach() for t in stacked])
    assert (losses < loss(*init)).all()  # every model descended


def test_a_non_finite_model_does_not_touch_the_others() -> None:
    a, b, w0 = _stacked_quadratics(3)
    w0[1, 0] = math.nan
    big_a, big_b = torch.stack(a), torch.stack(b)
    stacked = w0.clone().requires_grad_(True)
    opt = SaddleFreeNewton([stacked], lr=1.0, damping=0.1, krylov_dim=5, num_models=3)
    opt.step(lambda: (0.5 * torch.einsum("si,sij,sj->s", stacked, big_a, stacked)
                      + (big_b * stacked).sum(1)).sum())
    single = w0[0].clone().requires_grad_(True)
    SaddleFreeNewton([single], lr=1.0, damping=0.1, krylov_dim=5).step(
        lambda: 0.5 * single @ a[0] @ single + b[0] @ single)
    assert torch.isnan(stacked[1]).all()
    assert torch.allclose(stacked[0].detach(), single.detach(), rtol=0, atol=1e-12)
    assert torch.equal(stacked[2].detach(), w0[2])


# --------------------------------------------------------------------------- (e) validation

def _p() -> Tensor:
    return torch.zeros(3, dtype=DT, requires_grad=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [(dict(lr=-0.1), "Invalid learning rate: -0.1"),
     (dict(lr=math.nan), "Invalid learning rate: nan"),
     (dict(damping=0.0), "Invalid damping: 0.0"),
     (dict(damping=math.inf), "Invalid damping: inf"),
     (dict(krylov_dim=0), "Invalid krylov_dim: 0"),
     (dict(krylov_dim=2.5), "Invalid krylov_dim: 2.5"),
     (dict(krylov_dim=True), "Invalid krylov_dim: True"),
     (dict(max_step=0.0), "Invalid max_step: 0.0"),
     (dict(num_models=0), "Invalid num_models: 0"),
     (dict(num_models=2), r"num_models=2 means stacked models .* shape \(3,\)")],
)
def test_invalid_options_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SaddleFreeNewton([_p()], **kwargs)


def test_invalid_params_and_closures_are_refused() -> None:
    with pytest.raises(ValueError, match="exactly one parameter group"):
        SaddleFreeNewton([{"params": [_p()]}, {"params": [_p()]}])
    opt = SaddleFreeNewton([_p()])
    with pytest.raises(ValueError, match="exactly one parameter group"):
        opt.add_param_group({"params": [_p()]})
    with pytest.raises(ValueError, match="all must agree"):
        SaddleFreeNewton([_p(), torch.zeros(2, requires_grad=True)])
    w = _p()
    opt = SaddleFreeNewton([w])
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()
    with pytest.raises(RuntimeError, match="with its autograd graph"):
        opt.step(lambda: (w**2).sum().detach())
    with pytest.raises(RuntimeError, match="with its autograd graph"):
        opt.step(lambda: (w**2).sum().item())  # type: ignore[arg-type, return-value]

    def with_backward() -> Tensor:  # the LBFGS habit: it frees the graph we need
        loss = ((w - 1) ** 2).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="second time"):
        opt.step(with_backward)


def test_linear_and_unused_parameters() -> None:
    """A parameter the loss ignores stays put (zero gradient); a linear one has zero curvature
    along it, so its step is -lr g / damping."""
    w, lin, unused = _p(), torch.ones(2, dtype=DT, requires_grad=True), _p()
    with torch.no_grad():
        w.copy_(torch.tensor([1.0, -2.0, 0.5]))
    opt = SaddleFreeNewton([w, lin, unused], lr=1.0, damping=0.5, krylov_dim=5)
    opt.step(lambda: (w**2).sum() + (3.0 * lin).sum())
    assert torch.equal(unused.detach(), torch.zeros(3, dtype=DT))
    assert torch.equal(unused.grad, torch.zeros(3, dtype=DT))
    assert torch.allclose(lin.detach(), 1.0 - 3.0 / 0.5 * torch.ones(2, dtype=DT), atol=1e-12)
    assert torch.allclose(w.detach(), torch.tensor([1.0, -2.0, 0.5], dtype=DT) * (1 - 2 / 2.5),
                          atol=1e-12)


# --------------------------------------------------------------------------- (f) state

def test_state_dict_round_trip_stateless() -> None:
    """No per-parameter state: the state_dict is the options; a loaded optimizer takes the same
    step (after a scheduler-style change of lr)."""
    theta0, f, _ = _mlp_problem(seed=1)
    w1 = theta0.clone().requires_grad_(True)
    opt1 = SaddleFreeNewton([w1], lr=1.0, damping=0.3, krylov_dim=4, max_step=0.5)
    opt1.step(lambda: f(w1))
    opt1.param_groups[0]["lr"] = 0.25
    sd = opt1.state_dict()
    assert sd["state"] == {}
    w2 = w1.detach().clone().requires_grad_(True)
    opt2 = SaddleFreeNewton([w2], lr=1.0, damping=1.0, krylov_dim=2)
    opt2.load_state_dict(sd)
    group = opt2.param_groups[0]
    assert (group["lr"], group["damping"], group["krylov_dim"], group["max_step"]) == (
        0.25, 0.3, 4, 0.5)
    opt1.step(lambda: f(w1))
    opt2.step(lambda: f(w2))
    assert torch.equal(w1.detach(), w2.detach())
    assert not torch.equal(w1.detach(), theta0)


# --------------------------------------------------------------------------- API

def test_public_api_and_docstring_example() -> None:
    assert synaprune.SaddleFreeNewton is SaddleFreeNewton
    assert "SaddleFreeNewton" in synaprune.optim.__all__ and "SaddleFreeNewton" in synaprune.__all__
    result = doctest.testmod(sfn_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
