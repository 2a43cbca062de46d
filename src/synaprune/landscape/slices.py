"""Loss along a line and over a plane of parameter space, grid points evaluated in chunks.

Every point is ``theta = center + sum_k c_k * direction_k``. Two exact methods:

* ``"affine"`` (MLPs, see :mod:`synaprune.landscape._affine`): the first layer's products with
  the inputs are computed once for the whole grid (the first layer is affine in the
  coefficients), the other layers batched over a chunk of points with ``baddbmm``;
* ``"vmap"`` (any module): the parameters of a chunk of points are built at once as tensors of
  size [chunk, *shape], and ``vmap`` of ``torch.func.functional_call`` evaluates every point of
  the chunk in one call.

``method="auto"`` takes the affine path whenever the model qualifies. The chunk is as large as a
memory bound allows, so a grid of any size runs in bounded memory.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from synaprune.landscape._affine import bytes_per_point, evaluate_mlp, mlp_layers
from synaprune.landscape._params import ParamDict, check_coordinates, check_like

__all__ = ["interpolate", "slice_2d"]

LossFn = Callable[[Tensor, Tensor], Tensor]

#: Default bound on the memory of one chunk of grid points (bytes), see :func:`slice_2d`.
MAX_MEMORY = 8 * 2**20

#: Values of the ``method`` option.
METHODS = ("auto", "affine", "vmap")


def _check_data(data: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    if not isinstance(data, Sequence) or len(data) != 2:
        raise ValueError("data must be a pair (inputs, targets)")
    x, y = data
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.shape[:1] != y.shape[:1]:
        raise ValueError(
            "data must be two tensors with the same first (batch) size, got "
            f"{getattr(x, 'shape', type(x))} and {getattr(y, 'shape', type(y))}"
        )
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError("data inputs contain NaN or infinite values")
    return x, y


def _bytes_per_point(model: nn.Module, center: ParamDict, x: Tensor) -> int:
    """Parameters plus every module output of one forward pass at ``center``, in bytes."""
    sizes: list[int] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, Tensor):
            sizes.append(output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            functional_call(model, dict(center), (x,))
    finally:
        for handle in handles:
            handle.remove()
    params = sum(t.numel() * t.element_size() for t in center.values())
    return params + sum(sizes)


def _evaluate(
    model: nn.Module,
    loss_fn: LossFn,
    data: Sequence[Tensor],
    center: ParamDict,
    directions: Sequence[ParamDict],
    coefficients: Tensor,
    *,
    chunk_size: int | None,
    max_memory: int,
    method: str,
) -> Tensor:
    """Loss at ``center + coefficients[p] @ directions`` for every row p, size [P] (float64)."""
    if method not in METHODS:
        raise ValueError(f"Invalid method: {method!r}; expected one of {', '.join(METHODS)}")
    x, y = _check_data(data)
    check_like(model, center, "center")
    for i, direction in enumerate(directions):
        check_like(model, direction, f"direction {i + 1}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"Invalid chunk_size: {chunk_size}; expected a positive int or None")
    if max_memory <= 0:
        raise ValueError(f"Invalid max_memory: {max_memory}; expected a positive byte count")
    layers = mlp_layers(model, x) if method != "vmap" else None
    if method == "affine" and layers is None:
        raise ValueError(
            "method='affine' needs an nn.Sequential of nn.Linear and elementwise activations "
            "(no hooks, no buffers) and inputs of size [N, features]; use method='vmap'"
        )
    dtype = next(iter(center.values())).dtype
    coefficients = coefficients.to(dtype)
    if layers is not None:
        if chunk_size is None:
            chunk_size = max(1, max_memory // bytes_per_point(layers, center, x))
        result = evaluate_mlp(layers, loss_fn, x, y, center, directions, coefficients,
                              chunk_size)
        _warn_nan(result)
        return result
    if chunk_size is None:
        chunk_size = max(1, max_memory // _bytes_per_point(model, center, x))
    names = list(center)
    if _shares_modules(model):
        # functional_call under vmap leaves a module that appears twice holding escaped
        # batched tensors (torch 2.13): the caller's model would be broken afterwards.
        model = copy.deepcopy(model)

    def loss_at(params: dict[str, Tensor]) -> Tensor:
        return loss_fn(functional_call(model, params, (x,)), y)

    batched = vmap(loss_at)
    out = []
    with torch.no_grad():
        for start in range(0, coefficients.shape[0], chunk_size):
            c = coefficients[start:start + chunk_size]
            params = {}
            for name in names:
                base = center[name]
                value = base.expand(c.shape[0], *base.shape)
                view = (c.shape[0],) + (1,) * base.dim()
                for k, direction in enumerate(directions):
                    value = value + c[:, k].reshape(view) * direction[name]
                params[name] = value
            losses = batched(params)
            if losses.shape != (c.shape[0],):
                raise ValueError(
                    f"loss_fn must return a scalar (the batch's loss), got size "
                    f"{list(losses.shape[1:])}"
                )
            out.append(losses.to(torch.float64))
    result = torch.cat(out)
    _warn_nan(result)
    return result


def _shares_modules(model: nn.Module) -> bool:
    """Whether some submodule appears at two places (tied weights)."""
    every = [m for _, m in model.named_modules(remove_duplicate=False)]
    return len({id(m) for m in every}) != len(every)


def _warn_nan(result: Tensor) -> None:
    if torch.isnan(result).any():
        warnings.warn(
            f"{int(torch.isnan(result).sum())} of {result.numel()} grid points have a NaN loss",
            RuntimeWarning,
            stacklevel=4,
        )


def interpolate(
    model: nn.Module,
    loss_fn: LossFn,
    data: Sequence[Tensor],
    theta_a: ParamDict,
    theta_b: ParamDict,
    *,
    num: int = 51,
    alphas: Tensor | Sequence[float] | None = None,
    chunk_size: int | None = None,
    max_memory: int = MAX_MEMORY,
    method: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Loss along the line ``(1 - alpha) * theta_a + alpha * theta_b`` (Goodfellow et al. 2015).

    Args:
        model: The network; its parameters are not modified (``functional_call`` substitutes
            them), its buffers and train/eval mode are used as they are.
        loss_fn: ``loss_fn(output, targets) -> scalar``, the loss of the whole batch (the mean
            over examples for a ``reduction="mean"`` loss); it must work under ``vmap``
            (``torch.nn.functional`` losses do).
        data: ``(inputs, targets)``, one batch evaluated whole at every point.
        theta_a: Parameters at alpha = 0, a dict shaped like ``model.named_parameters()``.
        theta_b: Parameters at alpha = 1.
        num: Number of alphas, evenly spaced on [0, 1] (used when ``alphas`` is None).
        alphas: Explicit coordinates, size [A] (values outside [0, 1] extrapolate).
        chunk_size: Points evaluated together; None picks the largest within ``max_memory``.
        max_memory: Bound in bytes on one chunk's parameters and module outputs.
        method: ``"affine"`` (MLPs: the first layer's products computed once for all points,
            see the module docstring), ``"vmap"`` (any module), or ``"auto"``: affine when the
            model is an ``nn.Sequential`` of ``nn.Linear`` and elementwise activations with
            inputs [N, features], vmap otherwise. Both are exact up to rounding.

    Returns:
        ``(alphas, losses)``: float64 tensors of size [A].

    Raises:
        ValueError: Fewer than two alphas, NaN, parameter dicts that do not match the model,
            a ``loss_fn`` that does not return a scalar, an unknown ``method`` or
            ``method="affine"`` for a model that is not a plain MLP.
    """
    if alphas is None:
        if not isinstance(num, int) or num < 2:
            raise ValueError(f"Invalid num: {num}; a line needs at least 2 points")
        alphas = torch.linspace(0.0, 1.0, num, dtype=torch.float64)
    alphas = check_coordinates(alphas, "alphas", 2)
    check_like(model, theta_a, "theta_a")
    check_like(model, theta_b, "theta_b")
    delta = {name: theta_b[name] - theta_a[name] for name in theta_a}
    losses = _evaluate(model, loss_fn, data, theta_a, [delta], alphas[:, None],
                       chunk_size=chunk_size, max_memory=max_memory, method=method)
    return alphas, losses


def slice_2d(
    model: nn.Module,
    loss_fn: LossFn,
    data: Sequence[Tensor],
    center: ParamDict,
    d1: ParamDict,
    d2: ParamDict,
    alphas: Tensor | Sequence[float],
    betas: Tensor | Sequence[float],
    *,
    chunk_size: int | None = None,
    max_memory: int = MAX_MEMORY,
    method: str = "auto",
) -> Tensor:
    """Loss over the plane ``center + alpha * d1 + beta * d2`` (Li et al. 2018).

    Args:
        model, loss_fn, data, chunk_size, max_memory, method: As in :func:`interpolate`.
        center: Parameters at (0, 0), a dict shaped like ``model.named_parameters()``.
        d1: First direction (e.g. :func:`random_directions` or a principal direction of
            :func:`trajectory_pca`), same shapes.
        d2: Second direction.
        alphas: Coordinates along ``d1``, size [A], at least 2.
        betas: Coordinates along ``d2``, size [B], at least 2.

    Returns:
        Float64 losses of size [A, B]: ``losses[i, j]`` is the loss at
        ``center + alphas[i] * d1 + betas[j] * d2``.

    Raises:
        ValueError: As :func:`interpolate`.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> from synaprune.landscape import random_directions, slice_2d
        >>> model = nn.Linear(4, 1)
        >>> data = (torch.randn(8, 4), torch.randn(8, 1))
        >>> center = {n: p.detach() for n, p in model.named_parameters()}
        >>> g = torch.Generator().manual_seed(0)
        >>> d1, d2 = random_directions(model, g), random_directions(model, g)
        >>> grid = torch.linspace(-1, 1, 5)
        >>> slice_2d(model, F.mse_loss, data, center, d1, d2, grid, grid).shape
        torch.Size([5, 5])
    """
    alphas = check_coordinates(alphas, "alphas", 2)
    betas = check_coordinates(betas, "betas", 2)
    grid_a, grid_b = torch.meshgrid(alphas, betas, indexing="ij")
    coefficients = torch.stack([grid_a.reshape(-1), grid_b.reshape(-1)], dim=1)
    losses = _evaluate(model, loss_fn, data, center, [d1, d2], coefficients,
                       chunk_size=chunk_size, max_memory=max_memory, method=method)
    return losses.reshape(alphas.numel(), betas.numel())


