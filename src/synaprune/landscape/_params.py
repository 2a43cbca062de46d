"""Parameter dicts: the checks and the flat view shared by the landscape functions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

ParamDict = Mapping[str, Tensor]


def check_like(model: nn.Module, params: ParamDict, what: str) -> None:
    """Raise ValueError unless ``params`` has exactly the model's parameter names and shapes,
    one floating dtype, and only finite values."""
    expected = dict(model.named_parameters())
    if not isinstance(params, Mapping):
        raise ValueError(f"{what} must be a dict name -> tensor, got {type(params).__name__}")
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{what} does not match the model's parameters: missing {missing}, unexpected "
            f"{extra}; build it from model.named_parameters()"
        )
    for name, p in expected.items():
        value = params[name]
        if not isinstance(value, Tensor) or value.shape != p.shape:
            shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"{what}[{name!r}] has size {shape}, the model's parameter has {list(p.shape)}"
            )
        if value.dtype != p.dtype:
            raise ValueError(
                f"{what}[{name!r}] is {value.dtype}, the model's parameter is {p.dtype}; "
                "convert one of them"
            )
        if not torch.isfinite(value).all():
            raise ValueError(f"{what}[{name!r}] contains NaN or infinite values")


def check_coordinates(values: Tensor | Sequence[float], what: str, minimum: int) -> Tensor:
    """A 1-D float64 tensor of at least ``minimum`` finite coordinates, or ValueError."""
    out = torch.as_tensor(values, dtype=torch.float64).detach()
    if out.dim() != 1:
        raise ValueError(f"{what} must be one-dimensional, got size {list(out.shape)}")
    if out.numel() < minimum:
        raise ValueError(
            f"{what} has {out.numel()} value(s); a landscape needs at least {minimum} "
            "(e.g. torch.linspace(-1, 1, 51))"
        )
    if not torch.isfinite(out).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return out


def flatten(params: ParamDict, names: Sequence[str]) -> Tensor:
    """Concatenate ``params[name]`` for ``name`` in ``names`` into one vector of size [D]."""
    return torch.cat([params[name].reshape(-1) for name in names])


def unflatten(vector: Tensor, like: ParamDict) -> dict[str, Tensor]:
    """Split a vector of size [D] into tensors shaped like ``like`` (in its key order)."""
    out: dict[str, Tensor] = {}
    start = 0
    for name, ref in like.items():
        n = math.prod(ref.shape)
        out[name] = vector[start:start + n].reshape(ref.shape).clone()
        start += n
    return out
