"""synaprune.landscape against per-point loops in float64, and its input checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from synaprune.landscape import (
    draw_slice,
    interpolate,
    random_directions,
    slice_2d,
    trajectory_pca,
)


def _mlp(g: torch.Generator) -> tuple[nn.Module, tuple, object]:
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    data = (torch.randn(20, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (20,), generator=g))
    return model, data, F.cross_entropy


def _conv(g: torch.Generator) -> tuple[nn.Module, tuple, object]:
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    data = (torch.randn(6, 1, 6, 6, generator=g, dtype=torch.float64),
            torch.randn(6, 2, generator=g, dtype=torch.float64))
    return model, data, F.mse_loss


CASES = {"mlp-tanh-ce": _mlp, "conv-relu-mse": _conv}


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _loop_loss(model, loss_fn, data, params) -> float:
    """The usual way: load the point's parameters into a copy of the model, forward, loss."""
    clone = copy.deepcopy(model)
    clone.load_state_dict(params, strict=False)
    with torch.no_grad():
        return loss_fn(clone(data[0]), data[1]).item()


@pytest.mark.parametrize("chunk_size", [None, 1, 4])
@pytest.mark.parametrize("case", CASES)
def test_slice_equals_loop_reference(case, chunk_size):
    g = torch.Generator().manual_seed(0)
    model, data, loss_fn = CASES[case](g)
    center = _params(model)
    before = _params(model)
    d1 = random_directions(model, g)
    d2 = random_directions(model, g, one_dimensional="copy")
    alphas = torch.linspace(-1.0, 1.5, 5, dtype=torch.float64)
    betas = torch.tensor([-0.7, 0.0, 0.2, 1.1], dtype=torch.float64)
    grid = slice_2d(model, loss_fn, data, center, d1, d2, alphas, betas, chunk_size=chunk_size)
    assert grid.shape == (5, 4) and grid.dtype == torch.float64
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            point = {n: center[n] + a * d1[n] + b * d2[n] for n in center}
            ref = _loop_loss(model, loss_fn, data, point)
            # Same arithmetic, batched matmuls may round in another order: 1e-12 relative.
            assert grid[i, j].item() == pytest.approx(ref, rel=1e-12, abs=1e-12)
    for n, p in model.named_parameters():  # the model itself is left alone
        assert torch.equal(p.detach(), before[n])


@pytest.mark.parametrize("case", CASES)
def test_interpolate_equals_loop_reference_and_endpoints(case):
    g = torch.Generator().manual_seed(1)
    model, data, loss_fn = CASES[case](g)
    theta_a = _params(model)
    theta_b = {n: p + torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in theta_a.items()}
    alphas, losses = interpolate(model, loss_fn, data, theta_a, theta_b, num=7)
    assert torch.equal(alphas, torch.linspace(0, 1, 7, dtype=torch.float64))
    for a, value in zip(alphas, losses, strict=True):
        point = {n: (1 - a) * theta_a[n] + a * theta_b[n] for n in theta_a}
        # theta_a + a (theta_b - theta_a) and (1 - a) theta_a + a theta_b differ by rounding.
        assert value.item() == pytest.approx(_loop_loss(model, loss_fn, data, point),
                                             rel=1e-12, abs=1e-12)
    assert losses[0].item() == pytest.approx(_loop_loss(model, loss_fn, data, theta_a), rel=1e-12)
    assert losses[-1].item() == pytest.approx(_loop_loss(model, loss_fn, data, theta_b),
                                              rel=1e-12)


def test_memory_bound_picks_chunks_that_agree():
    g = torch.Generator().manual_seed(2)
    model, data, loss_fn = _mlp(g)
    center, d1, d2 = _params(model), random_directions(model, g), random_directions(model, g)
    grid = torch.linspace(-1, 1, 6, dtype=torch.float64)
    whole = slice_2d(model, loss_fn, data, center, d1, d2, grid, grid, chunk_size=36)
    tiny = slice_2d(model, loss_fn, data, center, d1, d2, grid, grid, max_memory=1)
    # One point per chunk or all at once: the same values up to the batched matmul's rounding.
    torch.testing.assert_close(tiny, whole, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("case", CASES)
def test_filter_normalisation(case):
    g = torch.Generator().manual_seed(3)
    model, _, _ = CASES[case](g)
    zero = random_directions(model, torch.Generator().manual_seed(5))
    copied = random_directions(model, torch.Generator().manual_seed(5), one_dimensional="copy")
    raw = random_directions(model, torch.Generator().manual_seed(5), filter_normalize=False)
    for name, p in model.named_parameters():
        w = p.detach()
        if w.dim() > 1:
            for i in range(w.shape[0]):  # each filter (output row) has the model filter's norm
                assert zero[name][i].norm().item() == pytest.approx(w[i].norm().item(),
                                                                    rel=1e-12)
                # ... and points the way the raw Gaussian filter does.
                cosine = F.cosine_similarity(zero[name][i].reshape(-1),
                                             raw[name][i].reshape(-1), dim=0)
                assert cosine.item() == pytest.approx(1.0, rel=1e-12)
            assert torch.equal(copied[name], zero[name])
        else:
            assert torch.equal(zero[name], torch.zeros_like(w))
            assert torch.equal(copied[name], w)
    reference = torch.Generator().manual_seed(5)
    for name, p in model.named_parameters():  # unnormalised: plain N(0, 1) in parameter order
        assert torch.equal(raw[name], torch.randn(p.shape, generator=reference, dtype=p.dtype))


def _plane_iterates(T: int, D: int = 30):
    g = torch.Generator().manual_seed(4)
    basis, _ = torch.linalg.qr(torch.randn(D, 2, generator=g, dtype=torch.float64))
    point = torch.randn(D, generator=g, dtype=torch.float64)
    coords = torch.randn(T, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0],
                                                                               dtype=torch.float64)
    flat = point + coords @ basis.T
    return [{"w": row[:20].reshape(4, 5), "b": row[20:]} for row in flat], basis


def _flat(it):
    return torch.cat([it["w"].reshape(-1), it["b"]])


@pytest.mark.parametrize("origin", ["final", "mean"])
def test_pca_of_planar_iterates_reconstructs_them(origin):
    iterates, basis = _plane_iterates(12)
    result = trajectory_pca(iterates, origin=origin)
    u, v = _flat(result.directions[0]), _flat(result.directions[1])
    o = _flat(result.origin)
    for t, it in enumerate(iterates):
        rebuilt = o + result.coordinates[t, 0] * u + result.coordinates[t, 1] * v
        torch.testing.assert_close(rebuilt, _flat(it), rtol=0, atol=1e-12)
    assert result.explained_variance_ratio.sum().item() == pytest.approx(1.0, abs=1e-12)
    # The directions are orthonormal and span the known plane.
    gram = torch.stack([u, v]) @ torch.stack([u, v]).T
    torch.testing.assert_close(gram, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-12)
    projection = basis @ (basis.T @ torch.stack([u, v]).T)
    torch.testing.assert_close(projection, torch.stack([u, v]).T, rtol=0, atol=1e-12)
    if origin == "final":
        torch.testing.assert_close(result.coordinates[-1], torch.zeros(2, dtype=torch.float64),
                                   rtol=0, atol=1e-12)
    assert (result.coordinates[-1] - result.coordinates[0] >= 0).all()


def test_pca_explained_variance_equals_covariance_eigenvalues():
    g = torch.Generator().manual_seed(6)
    flat = torch.randn(9, 14, generator=g, dtype=torch.float64).cumsum(dim=0)
    iterates = [{"w": row} for row in flat]
    result = trajectory_pca(iterates)
    eig = np.linalg.eigvalsh(np.cov(flat.numpy(), rowvar=False))[::-1]  # float64 reference
    np.testing.assert_allclose(result.explained_variance_ratio.numpy(), eig[:2] / eig.sum(),
                               rtol=1e-12)
    d1 = result.directions[0]["w"].numpy()
    top = np.linalg.eigh(np.cov(flat.numpy(), rowvar=False))[1][:, -1]
    assert abs(float(d1 @ top)) == pytest.approx(1.0, rel=1e-10)


def _bad_setup():
    g = torch.Generator().manual_seed(7)
    model, data, loss_fn = _mlp(g)
    return model, data, loss_fn, _params(model), random_directions(model, g)


def test_grid_of_one_point_is_refused():
    model, data, loss_fn, center, d = _bad_setup()
    with pytest.raises(ValueError, match="at least 2"):
        slice_2d(model, loss_fn, data, center, d, d, torch.tensor([0.0]), torch.zeros(3))
    with pytest.raises(ValueError, match="at least 2"):
        interpolate(model, loss_fn, data, center, d, num=1)


def test_mismatched_shapes_and_names_are_refused():
    model, data, loss_fn, center, d = _bad_setup()
    grid = torch.linspace(-1, 1, 3)
    wrong = dict(d, **{"0.weight": torch.zeros(7, 4, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"'0.weight'.*size \[7, 4\]"):
        slice_2d(model, loss_fn, data, center, wrong, d, grid, grid)
    missing = {k: v for k, v in d.items() if k != "2.bias"}
    with pytest.raises(ValueError, match=r"missing \['2.bias'\]"):
        slice_2d(model, loss_fn, data, center, d, missing, grid, grid)
    single = {k: v.float() for k, v in d.items()}
    with pytest.raises(ValueError, match="float32"):
        slice_2d(model, loss_fn, data, center, d, single, grid, grid)
    with pytest.raises(ValueError, match="same first"):
        slice_2d(model, loss_fn, (data[0], data[1][:3]), center, d, d, grid, grid)
    with pytest.raises(ValueError, match="one-dimensional"):
        slice_2d(model, loss_fn, data, center, d, d, torch.zeros(2, 2), grid)
    with pytest.raises(ValueError, match="scalar"):
        slice_2d(model, lambda o, y: F.cross_entropy(o, y, reduction="none"), data, center, d,
                 d, grid, grid)


def test_nan_inputs_are_refused():
    model, data, loss_fn, center, d = _bad_setup()
    grid = torch.linspace(-1, 1, 3)
    nan_center = dict(center, **{"2.bias": torch.full((3,), float("nan"), dtype=torch.float64)})
    with pytest.raises(ValueError, match="NaN"):
        slice_2d(model, loss_fn, data, nan_center, d, d, grid, grid)
    with pytest.raises(ValueError, match="alphas contains NaN"):
        slice_2d(model, loss_fn, data, center, d, d, torch.tensor([0.0, float("nan")]), grid)
    with pytest.raises(ValueError, match="inputs contain NaN"):
        slice_2d(model, loss_fn, (data[0] * float("nan"), data[1]), center, d, d, grid, grid)


def test_nan_loss_warns():
    model, data, _, center, d = _bad_setup()
    grid = torch.linspace(-1, 1, 3)
    with pytest.warns(RuntimeWarning, match="9 of 9 grid points have a NaN loss"):
        slice_2d(model, lambda o, y: (o * float("nan")).sum(), data, center, d, d, grid, grid)


def test_pca_bad_inputs():
    iterates, _ = _plane_iterates(5)
    with pytest.raises(ValueError, match="at least 3"):
        trajectory_pca(iterates[:2])
    line = [{"w": t * torch.ones(4, dtype=torch.float64)} for t in range(5)]
    with pytest.raises(ValueError, match="one line"):
        trajectory_pca(line)
    with pytest.raises(ValueError, match="names"):
        trajectory_pca([*iterates[:2], {"w": iterates[2]["w"]}])
    with pytest.raises(ValueError, match="size"):
        trajectory_pca([*iterates[:2], {"w": iterates[2]["w"][:2], "b": iterates[2]["b"]}])
    nan = [*iterates[:2], {"w": iterates[2]["w"] * float("nan"), "b": iterates[2]["b"]}]
    with pytest.raises(ValueError, match="NaN"):
        trajectory_pca(nan)
    with pytest.raises(ValueError, match="origin"):
        trajectory_pca(iterates, origin="first")


def test_random_directions_bad_option():
    model, _, _ = _mlp(torch.Generator().manual_seed(8))
    with pytest.raises(ValueError, match="one_dimensional"):
        random_directions(model, torch.Generator(), one_dimensional="drop")


def test_draw_slice(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    a, b = torch.linspace(-1, 1, 4), torch.linspace(-1, 1, 3)
    losses = 1 + a[:, None] ** 2 + b[None, :] ** 2
    contours = draw_slice(ax, a, b, losses, trajectory=torch.zeros(3, 2))
    # The contour levels span log10 of the losses drawn.
    assert contours.levels.min() <= np.log10(losses.min().item()) + 1e-12
    assert contours.levels.max() >= np.log10(losses.max().item()) - 1e-12
    with pytest.raises(ValueError, match="expected \\[4, 3\\]"):
        draw_slice(ax, a, b, losses.T)
    with pytest.raises(ValueError, match="positive"):
        draw_slice(ax, a, b, losses - 5)
    plt.close(fig)
