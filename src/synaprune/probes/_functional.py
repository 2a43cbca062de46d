"""Per-example gradient statistics as functions: the one implementation of each rule.

Convention (as in :mod:`synaprune.probes.grad_stats`): ``l_i`` is the loss of example i, ``g_i``
the gradient of ``l_i`` with respect to a parameter; statistics are sums over the batch,
``sum_i g_i`` and ``sum_i g_i**2``, in this per-example-loss convention (a mean-reduced loss's
1/B is the caller's to multiply out, through ``alpha``).

Every function takes an optional leading dimension of S stacked models (``num_models=S``, the
stacked-mode convention of :mod:`synaprune.optim`): then parameters are [S, ...], inputs are
[S, B, ...] (or [B, ...] shared by the models) and every statistic is [S, ...], model s's slice
being exactly its own. The models do not interact, so one backward pass of the sum of their
losses gives each its own gradients.

Callers: the hooks of :class:`synaprune.PerExampleGradStats` (the ``nn.Linear`` rule, one
model), the lab's seed-batched runner (:func:`per_example_sums`, S models) and the diagnosis's
cancellation (:func:`per_example_sums`, one model, independent of any probe on the model).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

__all__ = ["linear_sumsq", "per_example_sums"]

# Where per-example gradients are materialised (the vmap path), at most this many entries at
# once (chunks of examples); 2**24 entries are 128 MiB in float64.
CHUNK_ELEMENTS = 2**24

PerExampleLoss = Callable[[Tensor, Tensor], Tensor]


@functools.lru_cache(maxsize=16)
def _ones(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """n ones (cached: right after a backward pass every small allocation costs microseconds)."""
    return torch.ones(n, dtype=dtype, device=device)


def linear_sumsq(a2: Tensor | None, d2: Tensor, *, weight: bool = True, bias: bool = True,
                 alpha: float = 1.0, out_weight: Tensor | None = None,
                 out_bias: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """``alpha * sum_i g_i**2`` of an ``nn.Linear`` whose input rows are the examples.

    Example i's weight gradient is the outer product g_i = delta_i a_i^T of its output gradient
    and its input, and its bias gradient is delta_i, so ``sum_i g_i**2 = (delta**2)^T (a**2)``
    (one matrix product, no per-example gradient formed) and ``sum_i delta_i**2``.

    Args:
        a2: The squared input a**2, size [B, in] or [S, B, in] (None without ``weight``).
        d2: The squared output gradient delta**2 (delta = dl_i/dz_i per row, or that times a
            factor that ``alpha`` undoes), size [B, out] or [S, B, out].
        weight: Whether to compute the weight's statistic.
        bias: Whether to compute the bias's statistic.
        alpha: Factor on both results (B**2 undoes the 1/B of a mean-reduced loss).
        out_weight: If given, ``alpha * (d2^T a2)`` is added to it in place ([out, in] or
            [S, out, in]) and it is returned; else a new tensor.
        out_bias: Likewise for the bias ([out] or [S, out]).

    Returns:
        ``(weight statistic or None, bias statistic or None)``.
    """
    ws = bs = None
    stacked = d2.dim() == 3
    if weight:
        assert a2 is not None
        dt = d2.transpose(-1, -2)
        if stacked:
            if out_weight is None:
                ws = torch.bmm(dt, a2)
                if alpha != 1.0:
                    ws.mul_(alpha)
            else:
                ws = out_weight.baddbmm_(dt, a2, alpha=alpha)
        elif out_weight is None:
            # beta=0: the uninitialised buffer is ignored, not read
            ws = torch.empty(dt.shape[0], a2.shape[1], dtype=d2.dtype,
                             device=d2.device).addmm_(dt, a2, beta=0, alpha=alpha)
        else:
            ws = out_weight.addmm_(dt, a2, alpha=alpha)
    if bias:
        if stacked:
            s = d2.sum(1)
            bs = (s.mul_(alpha) if alpha != 1.0 else s) if out_bias is None else out_bias.add_(
                s, alpha=alpha)
        else:  # alpha * sum_i d2_i as one gemv
            ones = _ones(d2.shape[0], d2.dtype, d2.device)
            if out_bias is None:
                bs = torch.empty(d2.shape[1], dtype=d2.dtype, device=d2.device).addmv_(
                    d2.t(), ones, beta=0, alpha=alpha)
            else:
                bs = out_bias.addmv_(d2.t(), ones, alpha=alpha)
    return ws, bs


def _closed_form_applies(model: nn.Module, buffers: Mapping[str, Tensor], x: Tensor,
                         example_dims: int) -> bool:
    """Whether :func:`_mlp_sums` covers ``model``: an ``nn.Sequential`` of ``nn.Linear`` layers
    (their own forward) and parameter-free elementwise activations, without buffers (or frozen
    parameters), on vector inputs."""
    from synaprune.optim.penalty import ACTIVATIONS  # here: optim imports probes

    if buffers or not isinstance(model, nn.Sequential) or x.dim() != example_dims + 1:
        return False
    for m in model.children():
        if isinstance(m, nn.Linear):
            if type(m).forward is not nn.Linear.forward:
                return False
        elif not isinstance(m, ACTIVATIONS) or any(True for _ in m.parameters()):
            return False
    return True


def _mlp_sums(model: nn.Sequential, params: Mapping[str, Tensor], x: Tensor, y: Tensor,
              per_example_loss: PerExampleLoss, num_models: int | None, batched_data: bool,
              with_sum: bool) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """:func:`per_example_sums` in closed form for an MLP: one forward and one backward pass of
    sum_i l_i give each Linear layer's output gradients d_i = dl_i/dz_i (example i's loss only
    reaches its own z_i), then :func:`linear_sumsq` per layer, and sum_i g_i = d^T h."""
    h = x
    if num_models is not None and not batched_data:
        h = x.expand(num_models, *x.shape)
    layers: list[tuple[str, nn.Linear, Tensor, Tensor]] = []  # (name, module, input, output)
    with torch.enable_grad():
        for name, module in model.named_children():
            if isinstance(module, nn.Linear):
                w = params[f"{name}.weight"].detach()
                z = torch.matmul(h, w.transpose(-1, -2))
                if module.bias is not None:
                    z = z + params[f"{name}.bias"].detach().unsqueeze(-2)
                if not z.requires_grad:  # the first layer: start the graph here
                    z = z.requires_grad_(True)
                layers.append((name, module, h.detach(), z))
                h = z
            else:
                h = module(h)
        if num_models is None:
            out, target = h, y
        else:
            out = h.reshape(-1, *h.shape[2:])
            target = (y.reshape(-1, *y.shape[2:]) if batched_data
                      else y.repeat(num_models, *([1] * (y.dim() - 1))))
        grads = torch.autograd.grad(per_example_loss(out, target).sum(),
                                    [z for *_, z in layers])
    sumsq: dict[str, Tensor] = {}
    sums: dict[str, Tensor] | None = {} if with_sum else None
    for (name, module, h_in, _), d in zip(layers, grads, strict=True):
        has_bias = module.bias is not None
        ws, bs = linear_sumsq(h_in.square(), d.square(), bias=has_bias)
        sumsq[f"{name}.weight"] = ws  # type: ignore[assignment]
        if has_bias:
            sumsq[f"{name}.bias"] = bs  # type: ignore[assignment]
        if sums is not None:
            sums[f"{name}.weight"] = torch.matmul(d.transpose(-1, -2), h_in)
            if has_bias:
                sums[f"{name}.bias"] = d.sum(-2)
    return sumsq, sums


def _vmap_sums(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
               x: Tensor, y: Tensor, per_example_loss: PerExampleLoss, num_models: int | None,
               batched_data: bool, with_sum: bool,
               chunk_elements: int) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """:func:`per_example_sums` for any model: ``torch.func.vmap`` over examples of
    ``torch.func.grad`` of each example's loss (a batch of one), in chunks of examples."""

    def one_example(p: dict[str, Tensor], b: dict[str, Tensor], xi: Tensor,
                    yi: Tensor) -> Tensor:
        out = functional_call(model, (p, b), (xi.unsqueeze(0),))
        return per_example_loss(out, yi.unsqueeze(0)).sum()

    per_ex = vmap(grad(one_example), in_dims=(None, None, 0, 0))
    detached = {k: v.detach() for k, v in params.items()}
    n_params = sum(v.numel() for v in detached.values())  # all models' together
    if num_models is None:
        n_ex, example_dim = x.shape[0], 0
    else:
        data_dim = 0 if batched_data else None
        per_ex = vmap(per_ex, in_dims=(0, 0, data_dim, data_dim))
        n_ex, example_dim = (x.shape[1] if batched_data else x.shape[0]), 1
    chunk = max(1, chunk_elements // max(1, n_params))
    sumsq = {k: torch.zeros_like(v) for k, v in detached.items()}
    sums = {k: torch.zeros_like(v) for k, v in detached.items()} if with_sum else None
    for lo in range(0, n_ex, chunk):
        if num_models is not None and batched_data:
            xs, ys = x[:, lo:lo + chunk], y[:, lo:lo + chunk]
        else:
            xs, ys = x[lo:lo + chunk], y[lo:lo + chunk]
        g = per_ex(detached, dict(buffers), xs, ys)
        for k in sumsq:
            sumsq[k] += g[k].square().sum(dim=example_dim)
            if sums is not None:
                sums[k] += g[k].sum(dim=example_dim)
    return sumsq, sums


def per_example_sums(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    per_example_loss: PerExampleLoss,
    *,
    buffers: Mapping[str, Tensor] | None = None,
    num_models: int | None = None,
    batched_data: bool = False,
    force_fallback: bool = False,
    with_sum: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """``sum_i g_i**2`` (and ``sum_i g_i``) of a whole model, without hooks.

    An ``nn.Sequential`` of ``nn.Linear`` layers and parameter-free elementwise activations on
    vector inputs, without buffers, takes the closed form of :func:`linear_sumsq` per layer (one
    forward and one backward pass, no per-example gradient formed); any other model, or
    ``force_fallback=True``, takes ``torch.func.vmap`` of ``torch.func.grad`` over examples (in
    chunks of at most ``chunk_elements`` per-example gradient entries). Both give the same
    numbers to rounding.

    Args:
        model: The architecture (it may be on the ``meta`` device), called through
            ``torch.func.functional_call``; its own parameters and hooks are not used.
        params: The parameters to differentiate, by name: as in ``model`` for one model, or
            [S, ...] for S stacked models.
        x: Inputs, [B, ...] (shared by the stacked models), or [S, B, ...] with
            ``batched_data``.
        y: Targets, likewise.
        per_example_loss: ``per_example_loss(output, target)`` -> the losses l_i, size [N], of a
            batch of N examples (no reduction).
        buffers: The rest of the module state (buffers, parameters not differentiated), [S, ...]
            for stacked models.
        num_models: S for stacked models, None for one.
        batched_data: Whether ``x`` and ``y`` have the models' dimension 0 (each model its own
            examples).
        force_fallback: Use the vmap path even where the closed form applies.
        with_sum: Also return ``sum_i g_i``.
        chunk_elements: Bound on the per-example gradient entries held at once (vmap path).

    Returns:
        ``(sumsq, sums)``: by parameter name, ``sum_i g_i**2`` and (if ``with_sum``, else None)
        ``sum_i g_i``, each shaped like the parameter, detached. For a mean-reduced loss the
        batch gradient is ``sums[k] / B``.

    Example:
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def losses(out, target):
        ...     return (out - target).square().sum(1)
        >>> sumsq, _ = per_example_sums(model, dict(model.named_parameters()), x, y, losses)
        >>> sumsq["0.weight"].shape
        torch.Size([4, 3])
    """
    buffers = {} if buffers is None else dict(buffers)
    example_dims = 2 if num_models is not None and batched_data else 1
    if not force_fallback and _closed_form_applies(model, buffers, x, example_dims):
        return _mlp_sums(model, params, x, y, per_example_loss,  # type: ignore[arg-type]
                         num_models, batched_data, with_sum)
    return _vmap_sums(model, params, buffers, x, y, per_example_loss, num_models, batched_data,
                      with_sum, chunk_elements)
