"""Random directions in parameter space, filter-normalised as in Li et al. (2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["random_directions"]

ONE_DIMENSIONAL = ("zero", "copy")


def random_directions(
    model: nn.Module,
    generator: torch.Generator,
    *,
    filter_normalize: bool = True,
    one_dimensional: str = "zero",
) -> dict[str, Tensor]:
    """A Gaussian direction with one entry per parameter, optionally filter-normalised.

    Filter normalisation (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"):
    for every parameter with two or more dimensions (a Linear weight [out, in], a Conv weight
    [out, in, kh, kw]) each filter ``d[i]`` (one output row, i.e. a slice along dim 0) is
    rescaled to the norm of the same filter of the model, ``d[i] <- d[i] * ||w[i]|| / ||d[i]||``,
    so that a step of 1 along the direction changes every filter by its own size and
    scale-invariant networks get comparable plots. Parameters of at most one dimension (biases,
    BatchNorm scales) follow Li et al.'s two options: ``"zero"`` (their ``--xignore biasbn``,
    the default here: the slice leaves them at the centre) or ``"copy"`` (their default: the
    direction equals the parameter itself).

    Args:
        model: The model whose parameters give the shapes, dtype and filter norms.
        generator: Source of the Gaussian entries (torch's global RNG is not touched).
        filter_normalize: If False, every entry is plain N(0, 1), 1-D parameters included, and
            ``one_dimensional`` is ignored.
        one_dimensional: ``"zero"`` or ``"copy"``, see above.

    Returns:
        A dict ``name -> tensor`` shaped like ``model.named_parameters()``.

    Raises:
        ValueError: If ``one_dimensional`` is not one of the options or a parameter is not
            finite.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(3, 2)
        >>> d = random_directions(model, torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(d["weight"].norm(dim=1), model.weight.detach().norm(dim=1)))
        True
        >>> d["bias"].abs().sum().item()
        0.0
    """
    if one_dimensional not in ONE_DIMENSIONAL:
        raise ValueError(
            f"Invalid one_dimensional: {one_dimensional!r}; expected one of {ONE_DIMENSIONAL}"
        )
    out: dict[str, Tensor] = {}
    for name, p in model.named_parameters():
        w = p.detach()
        if not torch.isfinite(w).all():
            raise ValueError(f"Parameter {name!r} contains NaN or infinite values")
        d = torch.randn(w.shape, generator=generator, dtype=w.dtype, device=w.device)
        if filter_normalize:
            if w.dim() <= 1:
                d = torch.zeros_like(w) if one_dimensional == "zero" else w.clone()
            else:
                view = (-1,) + (1,) * (w.dim() - 1)
                w_norm = w.reshape(w.shape[0], -1).norm(dim=1).reshape(view)
                d_norm = d.reshape(d.shape[0], -1).norm(dim=1).reshape(view)
                # A Gaussian filter has norm 0 with probability 0; a zero filter of the model
                # gives a zero filter of the direction (0 / ||d|| = 0).
                d = d * (w_norm / d_norm)
        out[name] = d
    return out
