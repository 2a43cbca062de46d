"""Drawing a 2-D slice, with a trajectory over it, onto matplotlib axes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["draw_slice"]


def draw_slice(
    ax: Any,
    alphas: Tensor,
    betas: Tensor,
    losses: Tensor,
    *,
    trajectory: Tensor | None = None,
    levels: int = 30,
    log: bool = True,
) -> Any:
    """Filled contours of ``losses`` over (alpha, beta), and a trajectory drawn on top.

    Args:
        ax: A matplotlib ``Axes``.
        alphas: Size [A], the horizontal coordinates.
        betas: Size [B], the vertical coordinates.
        losses: Size [A, B], as returned by :func:`slice_2d`.
        trajectory: Optional size [T, 2] coordinates (e.g. ``TrajectoryPCA.coordinates``),
            drawn as a line from a circle (start) to a star (end).
        levels: Number of contour levels.
        log: Contour log10 of the loss (the loss must then be positive), which shows the
            flat valley and the high region in one picture.

    Returns:
        The contour set (for a colour bar: ``fig.colorbar(returned, ax=ax)``).

    Raises:
        ValueError: If the sizes do not match or ``log`` is asked for non-positive losses.
    """
    if losses.shape != (alphas.numel(), betas.numel()):
        raise ValueError(
            f"losses has size {list(losses.shape)}, expected [{alphas.numel()}, {betas.numel()}]"
        )
    values = losses.detach().to(torch.float64)
    if log:
        if not (values > 0).all():
            raise ValueError("log=True needs positive losses; pass log=False")
        values = values.log10()
    grid_b, grid_a = torch.meshgrid(betas.double(), alphas.double(), indexing="ij")
    contours = ax.contourf(grid_a.numpy(), grid_b.numpy(), values.T.numpy(), levels=levels,
                           cmap="viridis")
    ax.contour(grid_a.numpy(), grid_b.numpy(), values.T.numpy(), levels=levels, colors="k",
               linewidths=0.3, alpha=0.5)
    if trajectory is not None:
        path = trajectory.detach().to(torch.float64).numpy()
        ax.plot(path[:, 0], path[:, 1], color="tab:blue", lw=1.5, marker=".", ms=3)
        ax.plot(path[0, 0], path[0, 1], "o", color="white", mec="k", ms=7, label="start")
        ax.plot(path[-1, 0], path[-1, 1], "*", color="tab:red", mec="k", ms=11, label="end")
    return contours
