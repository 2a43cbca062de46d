"""Saddle-free Newton in a Krylov subspace (Dauphin et al. 2014), for small models.

Newton's step -H^{-1} g moves *towards* a saddle along the directions of negative curvature,
which is why Newton's method is attracted to saddle points. The saddle-free Newton step rescales
the gradient by |H|^{-1} instead, |H| the matrix with H's eigenvectors and the absolute values of
its eigenvalues: along positive curvature it is Newton's step, along negative curvature it goes
*down* the slope with step 1/|theta|, so it is repelled by saddles (Dauphin et al., "Identifying
and attacking the saddle point problem in high-dimensional non-convex optimization", NIPS 2014,
section 6 and algorithm 1).

Forming |H| costs an eigendecomposition of the n x n Hessian, so, as in the paper, H is
restricted to a k-dimensional Krylov subspace built by Lanczos (Hessian-vector products only):

    V = [q_1, ..., q_k] orthonormal, q_1 = g / ||g||,  span(V) = span(g, H g, ..., H^{k-1} g),
    T = V^T H V = Q diag(theta) Q^T,
    step = -lr * V Q diag(1 / (|theta| + damping)) Q^T V^T g.

Because the Krylov space starts at g, g lies in span(V) and V^T g = ||g|| e_1, so the step is the
exact damped saddle-free Newton step of the Hessian compressed to the subspace. When the Krylov
space closes early (H maps span(V) into itself, "breakdown", the residual beta ~ 0) the step is
the exact -lr (|H| + damping I)^{-1} g of the full Hessian, and the iteration stops there.

Cost of a step: one forward pass (the closure), one gradient with ``create_graph=True``, and
k Hessian-vector products, each one backward pass over the kept first-order graph (the
"reuse-graph" way of :mod:`synaprune.curvature.hvp`); memory: the first-order graph plus k
vectors of n numbers per model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from synaprune.curvature.lanczos import krylov_basis
from synaprune.optim._stacked import check_num_models, check_stacked

__all__ = ["SaddleFreeNewton"]


class SaddleFreeNewton(Optimizer):
    r"""Damped saddle-free Newton steps in a Krylov subspace of the loss Hessian.

    One step (per model; see the module docstring for the derivation):

    1. ``loss = closure()``; g = d loss / d params with ``create_graph=True``;
    2. Lanczos with full reorthogonalisation (every new vector orthogonalised twice against all
       previous ones, so T = V^T H V is exact to rounding), started from q_1 = g / ||g||, for
       k = min(krylov_dim, n) vectors, or fewer if the Krylov space becomes invariant (the
       residual norm falls to eps^(2/3) times the largest ||H q_j|| seen);
    3. T = Q diag(theta) Q^T (``torch.linalg.eigh``);
    4. d = V Q diag(1 / (|theta| + damping)) Q^T V^T g; if ``max_step`` is set and ||lr d|| is
       larger, d is scaled down so that ||lr d|| = max_step;
    5. p <- p - lr d, and ``p.grad`` is set to g (detached), for the user to inspect.

    Closure contract (**differs from** ``torch.optim.LBFGS``): ``closure()`` re-evaluates the
    loss at the current parameters and returns the scalar loss tensor *with its autograd graph*,
    and it must NOT call ``backward()`` (nor ``.item()`` or ``.detach()`` on what it returns).
    The optimizer differentiates that loss itself, twice: the gradient with ``create_graph=True``,
    then each Hessian-vector product as one more backward pass through the gradient's graph.
    ``zero_grad`` is not needed: ``p.grad`` is overwritten with the gradient at every step. A
    closure that calls ``backward()`` frees the graph, and torch then refuses to differentiate
    it again ("Trying to backward through the graph a second time"); a closure that returns a
    detached loss or a Python number raises ``RuntimeError``.

    Parameter groups: exactly one. The step couples all parameters through the Hessian, so
    per-group options would have no meaning; a second group raises ``ValueError``.
    ``lr``, ``damping``, ``krylov_dim`` and ``max_step`` live in ``param_groups[0]``, so
    learning-rate schedulers work.

    State: none per parameter; ``state_dict`` holds the options only (the step is a function of
    the current parameters alone). The attributes ``ritz_values`` and ``krylov_dims`` report
    the last step (diagnostics, not state).

    Stacked mode (``num_models=S``, the convention of every optimizer in :mod:`synaprune.optim`,
    ``synaprune/optim/_stacked.py``): every parameter is a stacked [S, ...] tensor of S independent
    models and the closure returns the SUM of the S models' losses. The Hessian of that sum is block
    diagonal, so one Hessian-vector product of the sum gives every model its own H_s v_s; the S
    Lanczos recursions run together (dot products and norms per model, T of size [S, k, k], one
    batched ``eigh``). A model whose Krylov space closed early gets zero further basis vectors and,
    in T, a dummy diagonal entry larger than its spectrum: its coefficient Q^T V^T g there is zero,
    so it contributes nothing and cannot mix with the model's true Ritz values. A model with a zero
    gradient takes a zero step; one with a non-finite gradient or curvature gets a NaN step (as
    plain gradient descent would), without touching the other models. The result for model s equals
    a single-model optimizer on model s alone, to rounding.

    Args:
        params: the parameters (an iterable of tensors, or one dict as a parameter group), all
            of one floating dtype and device; the step is computed in that dtype.
        lr: step size multiplying the saddle-free Newton direction (>= 0; 1 is the full step).
        damping: added to |theta| (> 0): caps the step along near-flat directions at
            lr * ||g|| / damping, the Levenberg-Marquardt damping of the paper. It is on the
            scale of the Hessian's eigenvalues; the default 0.01 is the lab's, chosen on xor
            (:class:`synaprune.bench.methods.SaddleFreeNewtonMethod`), and too small for some
            problems (there: raise it, or set ``max_step``).
        krylov_dim: k, the number of Lanczos vectors (>= 1; capped at the number of parameters
            per model). k Hessian-vector products per step.
        max_step: if set (> 0), the largest Euclidean norm of a model's step; None: no cap.
        num_models: S for stacked mode, or None for one model (plain parameter shapes).

    Raises:
        ValueError: an invalid option, more than one parameter group, parameters of mixed
            dtype or device, or stacked parameters whose dim 0 is not ``num_models``.

    Example:
        >>> import torch
        >>> from synaprune.optim import SaddleFreeNewton
        >>> xy = torch.tensor([1.0, 0.01], dtype=torch.float64, requires_grad=True)
        >>> def loss_fn():  # a saddle at (0, 0), minima at (0, +-1) with value -1/4
        ...     x, y = xy
        ...     return x**2 + y**4 / 4 - y**2 / 2
        >>> opt = SaddleFreeNewton([xy], lr=1.0, damping=0.1, krylov_dim=2)
        >>> for _ in range(30):
        ...     loss = opt.step(loss_fn)  # the closure returns the loss, no backward()
        >>> round(loss_fn().item(), 6)
        -0.25
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        *,
        damping: float = 0.01,
        krylov_dim: int = 20,
        max_step: float | None = None,
        num_models: int | None = None,
    ) -> None:
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0.0):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping > 0.0):
            raise ValueError(f"Invalid damping: {damping}; must be a finite value > 0")
        if isinstance(krylov_dim, bool) or not isinstance(krylov_dim, int) or krylov_dim < 1:
            raise ValueError(f"Invalid krylov_dim: {krylov_dim}; must be an int >= 1")
        if max_step is not None and not (
            isinstance(max_step, (int, float)) and math.isfinite(max_step) and max_step > 0.0
        ):
            raise ValueError(f"Invalid max_step: {max_step}; must be a finite value > 0 or None")
        check_num_models(num_models)
        defaults = dict(lr=lr, damping=damping, krylov_dim=krylov_dim, max_step=max_step)
        super().__init__(params, defaults)
        self.num_models = num_models
        flat = self.param_groups[0]["params"]
        first = flat[0]
        for i, p in enumerate(flat):
            if not p.dtype.is_floating_point:
                raise ValueError(f"Invalid parameter {i}: non-floating dtype {p.dtype}")
            if p.dtype != first.dtype or p.device != first.device:
                raise ValueError(
                    f"Invalid parameter {i}: {p.dtype} on {p.device}, but parameter 0 is "
                    f"{first.dtype} on {first.device}; all must agree")
        check_stacked(flat, num_models)
        # Diagnostics of the last step: Ritz values ([S, k], NaN past a model's Krylov
        # dimension; [k] for one model) and the Krylov dimension reached ([S] or a 0-d tensor).
        self.ritz_values: Tensor | None = None
        self.krylov_dims: Tensor | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add the (only) parameter group; a second one raises ``ValueError``."""
        if self.param_groups:
            raise ValueError(
                "Invalid param_groups: SaddleFreeNewton takes exactly one parameter group (the "
                "Hessian couples all parameters, so per-group options have no meaning)")
        super().add_param_group(param_group)

    # -- flat [S, n] vectors <-> parameter-shaped tensors --------------------------------------

    def _models(self) -> int:
        return 1 if self.num_models is None else self.num_models

    def _flatten(self, tensors: list[Tensor]) -> Tensor:
        """Parameter-shaped tensors -> [S, n]: model s's entries in row s, parameter order."""
        s = self._models()
        return torch.cat([t.reshape(s, -1) for t in tensors], dim=1)

    def _unflatten(self, flat: Tensor, params: list[Tensor]) -> list[Tensor]:
        """[S, n] -> tensors shaped like ``params`` (the inverse of :meth:`_flatten`)."""
        s = self._models()
        sizes = [p.numel() // s for p in params]
        return [c.reshape(p.shape) for c, p in zip(flat.split(sizes, dim=1), params, strict=True)]

    def _curvature(self, theta: Tensor) -> Tensor:
        """The map applied to the Ritz values: |theta| (saddle-free). Tests override it with
        the identity to get plain (damped) Newton in the same subspace."""
        return theta.abs()

    def _select_models(self, index: list[int]) -> None:
        """Per-model state for :func:`synaprune.optim._stacked.select_models`: the last
        step's diagnostics."""
        if self.ritz_values is not None:
            self.ritz_values = self.ritz_values[index]
        if self.krylov_dims is not None:
            self.krylov_dims = self.krylov_dims[index]
        self.num_models = len(index)

    # -- the step --------------------------------------------------------------------------

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """Take one saddle-free Newton step.

        Args:
            closure: returns the loss at the current parameters as a scalar tensor with its
                graph, without calling ``backward()`` (in stacked mode: the sum of the S
                models' losses).

        Returns:
            The closure's loss, detached (before the step).

        Raises:
            RuntimeError: without a closure, or when the closure's result is not a scalar
                tensor that depends on the parameters through autograd.
        """
        if closure is None:
            raise RuntimeError(
                "SaddleFreeNewton needs a closure that returns the loss with its graph (and "
                "does not call backward): it differentiates the loss twice itself")
        group = self.param_groups[0]
        params: list[Tensor] = list(group["params"])
        with torch.enable_grad():
            loss = closure()
            if not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.requires_grad:
                raise RuntimeError(
                    "SaddleFreeNewton's closure must return the scalar loss tensor with its "
                    "autograd graph (not detached, not .item(), and no backward() needed)")
            grads = torch.autograd.grad(loss.reshape(()), params, create_graph=True,
                                        allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params,
                                                                          strict=True)]
        # Only gradient pieces that depend on the parameters take part in the products; a
        # piece that is constant (loss linear in that parameter) has zero second derivatives.
        linked = [i for i, g in enumerate(grads) if g.requires_grad]

        def hvp(v: Tensor) -> Tensor:
            """H v for flat v of size [S, n]: block diagonal in stacked mode (sum of losses)."""
            if not linked:
                return torch.zeros_like(v)
            parts = self._unflatten(v, params)
            with torch.enable_grad():
                hv = torch.autograd.grad([grads[i] for i in linked], params,
                                         grad_outputs=[parts[i] for i in linked],
                                         retain_graph=True, allow_unused=True)
            return self._flatten([torch.zeros_like(p) if h is None else h.detach()
                                  for h, p in zip(hv, params, strict=True)])

        with torch.no_grad():
            g = self._flatten([gr.detach() for gr in grads])  # [S, n]
            direction = self._direction(g, hvp, group["damping"], group["krylov_dim"])
            step = -group["lr"] * direction
            if group["max_step"] is not None:
                norm = torch.linalg.vector_norm(step, dim=1, keepdim=True)
                step = step * torch.clamp(group["max_step"] / norm, max=1.0).nan_to_num(1.0)
            for p, d, gr in zip(params, self._unflatten(step, params), grads, strict=True):
                p.add_(d)
                p.grad = gr.detach().clone()
        return loss.detach()  # the first-order graph is released with grads and hvp

    def _direction(self, g: Tensor, hvp: Callable[[Tensor], Tensor], damping: float,
                   krylov_dim: int) -> Tensor:
        """V Q diag(1 / (|theta| + damping)) Q^T V^T g for each model; g and result [S, n]."""
        n = g.shape[1]
        k = min(krylov_dim, n)
        dtype, device = g.dtype, g.device
        # The one Lanczos process of synaprune.curvature, on the S stacked models at once.
        kb = krylov_basis(hvp, g, k)
        basis, dims, finite = kb.basis, kb.dims, kb.finite
        proj = kb.proj
        # Unused slots: a dummy eigenvalue beyond the model's spectrum (||T||_F bounds it), so
        # eigh keeps it apart from the true Ritz values; its coefficient in V^T g is zero.
        used = torch.arange(k, device=device)[None, :] < dims[:, None]  # [S, k]
        bound = torch.linalg.matrix_norm(torch.where(finite[:, None, None], proj, 0.0))
        dummy = (2.0 * bound + 1.0)[:, None] * (~used).to(dtype)
        proj = torch.where(finite[:, None, None], proj, 0.0) + torch.diag_embed(dummy)
        theta, q = torch.linalg.eigh(proj)  # [S, k], [S, k, k]
        coef = torch.einsum("sin,sn->si", basis, g)  # V^T g = ||g|| e_1 up to rounding
        coef = torch.einsum("sji,sj->si", q, coef) / (self._curvature(theta) + damping)
        coef = torch.einsum("sij,sj->si", q, coef)
        direction = torch.einsum("sin,si->sn", basis, coef)
        direction = torch.where(finite[:, None], direction, math.nan)
        # eigh sorts ascending and every dummy lies above the true spectrum, so a model's
        # Ritz values are its first dims[s] eigenvalues.
        ritz = torch.where(used & finite[:, None], theta, math.nan)
        self.ritz_values = ritz if self.num_models is not None else ritz[0]
        self.krylov_dims = dims if self.num_models is not None else dims[0]
        return direction
