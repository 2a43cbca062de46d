"""Grid points of a landscape through an MLP, with the first layer's products shared by all.

On every point ``theta = center + sum_k c_k * direction_k`` of a line or a plane, the first
layer's pre-activation of an MLP ``nn.Sequential(nn.Linear, act, nn.Linear, ...)`` is affine in
the coefficients:

    x (W0 + sum_k c_k D0k)^T + (b0 + sum_k c_k e0k) = Z0 + sum_k c_k Zk,
    Z0 = x W0^T + b0,  Zk = x D0k^T + e0k,   each of size [N, H1].

The K + 1 products ``Z0, Zk`` are computed once for the whole grid; a point's first layer then
costs K multiply-adds per entry of [N, H1] instead of a product with ``in_features`` terms per
entry. The remaining layers are evaluated for a chunk of P points at once, each point with its
own weights ``W + sum_k c_k D`` (``torch.baddbmm`` over [P, out, in] x [P, in, N]).

The result equals the per-point forward pass up to rounding (the sums are taken in a different
order): float64 agrees to ~1e-15 relative, see tests/landscape/test_affine.py.

Only what is certainly an MLP takes this path (:func:`mlp_layers`): an ``nn.Sequential`` of
exactly ``nn.Linear`` and parameter-free elementwise activations of the listed types, no hooks,
no buffers, two-dimensional inputs. Anything else (convolutions, normalisation, dropout,
subclasses that may override ``forward``) goes through the general vmap path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from synaprune.landscape._params import ParamDict

__all__ = ["ELEMENTWISE", "bytes_per_point", "evaluate_mlp", "mlp_layers"]

#: Activation modules applied entry by entry (so a leading grid-point dimension is harmless).
#: Exact types only: a subclass may override ``forward``.
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Identity,
)


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _global_hooks() -> bool:
    from torch.nn.modules import module as module_mod

    return bool(module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks)


def mlp_layers(model: nn.Module, x: Tensor) -> list[nn.Module] | None:
    """The layers of ``model`` if it is an MLP the affine path evaluates exactly, else None.

    Args:
        model: The network.
        x: The inputs, size [N, in_features] for the path to apply.

    Returns:
        ``list(model)`` when ``model`` is exactly an ``nn.Sequential`` whose first module is an
        ``nn.Linear``, whose other modules are ``nn.Linear`` or one of :data:`ELEMENTWISE`
        (exact types), each used once, with no buffers and no forward hooks, and ``x`` is
        two-dimensional; otherwise None.
    """
    if type(model) is not nn.Sequential or x.dim() != 2 or _global_hooks() or _has_hooks(model):
        return None
    layers = list(model)
    if not layers or type(layers[0]) is not nn.Linear:
        return None
    if len({id(layer) for layer in layers}) != len(layers):
        return None  # a module used twice: its parameters are named once, at its first place
    if any(True for _ in model.buffers()):
        return None
    for layer in layers:
        if _has_hooks(layer):
            return None
        if type(layer) is nn.Linear:
            continue
        if type(layer) not in ELEMENTWISE or any(True for _ in layer.parameters()):
            return None
    return layers


def bytes_per_point(layers: Sequence[nn.Module], center: ParamDict, x: Tensor) -> int:
    """Memory of one grid point on the affine path: its weights and its widest activation
    (twice: a layer's input and output are alive together), in bytes."""
    element = next(iter(center.values())).element_size()
    widths = [layer.out_features for layer in layers if isinstance(layer, nn.Linear)]
    weights = sum(t.numel() for t in center.values())
    return element * (weights + 2 * x.shape[0] * max(widths))


def _stacked(center: ParamDict, directions: Sequence[ParamDict], name: str
             ) -> tuple[Tensor, Tensor] | None:
    """``(center[name] as [1, numel], directions' [name] stacked as [K, numel])``, or None."""
    if name not in center:
        return None
    return (center[name].reshape(1, -1),
            torch.stack([d[name].reshape(-1) for d in directions]))


def _combine(stacked: tuple[Tensor, Tensor], c: Tensor, shape: torch.Size) -> Tensor:
    """``base + sum_k c[:, k] * dirs[k]`` for every row of ``c`` [P, K], size [P, *shape]."""
    base, dirs = stacked
    return torch.addmm(base, c, dirs).reshape(c.shape[0], *shape)


def _first_layer(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``weight @ x^T + bias[:, None]``, size [out, N]."""
    if bias is None:
        return weight @ x.T
    return torch.addmm(bias[:, None], weight, x.T)


def evaluate_mlp(
    layers: Sequence[nn.Module],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    center: ParamDict,
    directions: Sequence[ParamDict],
    coefficients: Tensor,
    chunk_size: int,
) -> Tensor:
    """Loss at ``center + coefficients[p] @ directions`` for every row p, size [P] (float64).

    Args:
        layers: From :func:`mlp_layers` (parameter names ``"{i}.weight"``, ``"{i}.bias"``).
        loss_fn: ``loss_fn(output, targets) -> scalar`` for one point (called once per point;
            it need not support vmap).
        x: Inputs [N, in]; y: targets [N, ...].
        center: Parameters at the origin of the grid.
        directions: K parameter dicts.
        coefficients: [P, K] in the parameters' dtype.
        chunk_size: Points evaluated together.
    """
    def param(d: ParamDict, i: int, kind: str) -> Tensor | None:
        return d.get(f"{i}.{kind}")

    out = []
    with torch.no_grad():
        # Activations are kept as [P, features, N] (examples last): each point's layer is then
        # W [out, in] @ h [in, N], the orientation in which batched products run fastest here
        # (benchmarks/landscape.py). Z0 = W0 x^T + b0 [H1, N] and Z1..ZK stacked [K, H1 * N]
        # are the only products with x, done once for the whole grid.
        z0 = _first_layer(x, param(center, 0, "weight"), param(center, 0, "bias"))
        zk = torch.stack([_first_layer(x, param(d, 0, "weight"), param(d, 0, "bias")).reshape(-1)
                          for d in directions])
        later = {i: (_stacked(center, directions, f"{i}.weight"),
                     _stacked(center, directions, f"{i}.bias"))
                 for i, layer in enumerate(layers) if i and type(layer) is nn.Linear}
        for start in range(0, coefficients.shape[0], chunk_size):
            c = coefficients[start:start + chunk_size]
            p = c.shape[0]
            # Z0 + sum_k c_k Zk for the P points of the chunk in one pass: [P, H1, N].
            h = torch.addmm(z0.reshape(1, -1), c, zk).reshape(p, *z0.shape)
            for i, layer in enumerate(layers[1:], start=1):
                if type(layer) is nn.ReLU:
                    h = h.relu_()  # h is this function's own buffer: no copy needed
                    continue
                if type(layer) is not nn.Linear:
                    h = layer(h)
                    continue
                w_stack, b_stack = later[i]
                assert w_stack is not None  # nn.Linear always has a weight
                weight = _combine(w_stack, c, layer.weight.shape)
                if b_stack is None:
                    h = torch.bmm(weight, h)
                else:
                    h = torch.baddbmm(_combine(b_stack, c, layer.bias.shape)[:, :, None],
                                      weight, h)
            # [P, N, out] as loss_fn expects, contiguous: a loss such as cross-entropy runs
            # several times slower on the transposed view than on this copy (out << N).
            h = h.transpose(1, 2).contiguous()
            # One call per point on its contiguous [N, out] slice: as fast as vmap here
            # (cross-entropy: faster), and loss_fn need not support vmap.
            losses = [loss_fn(h[q], y) for q in range(p)]
            if any(value.dim() != 0 for value in losses):
                shape = next(list(v.shape) for v in losses if v.dim() != 0)
                raise ValueError(
                    f"loss_fn must return a scalar (the batch's loss), got size {shape}"
                )
            losses = torch.stack(losses)
            out.append(losses.to(torch.float64))
    return torch.cat(out)
