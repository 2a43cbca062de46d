"""The plane of a training trajectory: PCA of the parameter iterates (Li et al. 2018, sec. 7)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from synaprune.landscape._params import ParamDict, flatten, unflatten

__all__ = ["TrajectoryPCA", "trajectory_pca"]

ORIGINS = ("final", "mean")


@dataclass(frozen=True)
class TrajectoryPCA:
    """The two principal directions of a trajectory and its coordinates in their plane.

    Attributes:
        origin: The plane's (0, 0), a parameter dict (the final iterate or the mean iterate).
        directions: Two parameter dicts, orthonormal as flat vectors (unit norm over all
            parameters together); ``directions[0]`` has the largest variance.
        coordinates: Size [T, 2]: ``coordinates[t] = ((theta_t - origin) . d1,
            (theta_t - origin) . d2)``.
        explained_variance_ratio: Size [2]: the share of the iterates' total variance (about
            their mean) along each direction; the two sum to 1 when the iterates lie in a plane.
    """

    origin: dict[str, Tensor]
    directions: tuple[dict[str, Tensor], dict[str, Tensor]]
    coordinates: Tensor
    explained_variance_ratio: Tensor


def trajectory_pca(iterates: Sequence[ParamDict], *, origin: str = "final") -> TrajectoryPCA:
    """Principal directions of parameter iterates theta_0..theta_{T-1}, and their projections.

    The directions are the top two right singular vectors of the iterates centred on their
    mean (ordinary PCA, as Li et al. compute it with scikit-learn). The coordinates are
    measured from ``origin``; with ``"final"`` (Li et al.'s choice) the plane passes through the
    last iterate, so a 2-D slice centred there shows where training ended. When the iterates lie
    in a plane, ``origin + coordinates @ directions`` reconstructs them exactly.

    Signs are fixed so that each coordinate increases from the first iterate to the last
    (``coordinates[-1] - coordinates[0] >= 0``), which makes the result deterministic.

    Args:
        iterates: T >= 3 dicts ``name -> tensor`` with the same names, shapes and floating dtype
            (e.g. ``{n: p.detach().clone() for n, p in model.named_parameters()}`` each step).
        origin: ``"final"`` or ``"mean"``.

    Returns:
        A :class:`TrajectoryPCA`.

    Raises:
        ValueError: Fewer than 3 iterates, mismatched names or shapes, NaN, or iterates that do
            not span two directions (all equal, or on one line).
    """
    if origin not in ORIGINS:
        raise ValueError(f"Invalid origin: {origin!r}; expected one of {ORIGINS}")
    if len(iterates) < 3:
        raise ValueError(
            f"Got {len(iterates)} iterate(s); two principal directions need at least 3"
        )
    first = iterates[0]
    if not isinstance(first, Mapping) or not first:
        raise ValueError("Each iterate must be a non-empty dict name -> tensor")
    names = list(first)
    for t, it in enumerate(iterates):
        if not isinstance(it, Mapping) or list(it) != names:
            raise ValueError(f"Iterate {t} does not have the names of iterate 0: {names}")
        for name in names:
            if it[name].shape != first[name].shape or it[name].dtype != first[name].dtype:
                raise ValueError(
                    f"Iterate {t}[{name!r}] has size {list(it[name].shape)} "
                    f"({it[name].dtype}), iterate 0 has {list(first[name].shape)} "
                    f"({first[name].dtype})"
                )
    if not first[names[0]].is_floating_point():
        raise ValueError("Iterates must be floating-point tensors")
    matrix = torch.stack([flatten(it, names).detach() for it in iterates])  # [T, D]
    if not torch.isfinite(matrix).all():
        raise ValueError("Iterates contain NaN or infinite values")
    mean = matrix.mean(dim=0)
    _, singular, vh = torch.linalg.svd(matrix - mean, full_matrices=False)
    # Matrix-rank tolerance (as numpy.linalg.matrix_rank): below it a singular value is rounding.
    tol = singular[0] * max(matrix.shape) * torch.finfo(matrix.dtype).eps
    if singular.numel() < 2 or singular[1] <= tol:
        raise ValueError(
            "The iterates do not span two directions (they are all equal or lie on one line); "
            "use interpolate() for a line"
        )
    basis = vh[:2]  # [2, D]
    center = matrix[-1] if origin == "final" else mean
    coordinates = (matrix - center) @ basis.T  # [T, 2]
    signs = torch.where(coordinates[-1] - coordinates[0] < 0, -1.0, 1.0).to(matrix.dtype)
    basis = basis * signs[:, None]
    coordinates = coordinates * signs
    variance = singular.square()
    like = {name: first[name] for name in names}
    return TrajectoryPCA(
        origin=unflatten(center, like),
        directions=(unflatten(basis[0], like), unflatten(basis[1], like)),
        coordinates=coordinates,
        explained_variance_ratio=variance[:2] / variance.sum(),
    )
