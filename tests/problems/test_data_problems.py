"""Problems with data: known solutions, references and splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synaprune.problems import get_problem, pca_reconstruction_mse

F64 = torch.float64


# ---------------------------------------------------------------------- gaussians


@pytest.mark.parametrize("components", [4, 6])
def test_gaussians_true_parameters_give_zero_loss(components: int) -> None:
    from synaprune.problems._gaussians import TRUE_PARAMETERS

    problem = get_problem("gaussians", components=components)
    model = problem.build_model(0)
    with torch.no_grad():
        for name, values in TRUE_PARAMETERS.items():
            getattr(model, name)[:4] = torch.tensor(values, dtype=F64)
        model.heights[4:] = 0.0  # extra components switched off
    # The model sums six bumps (two switched off), the targets four: the same values added in
    # another order, so the loss is zero to rounding (a few ulps of |y| per example), not exactly.
    _, y = problem.data()
    rounding = (64 * torch.finfo(F64).eps * float(y.abs().max())) ** 2
    assert 0 <= problem.loss(model).item() <= rounding
    assert problem.solved(0.0)
    # Moving one centre by 0.1 is a failure: the tolerance is tight.
    with torch.no_grad():
        model.means[0] += 0.1
    assert not problem.solved(problem.loss(model).item())


def test_gaussians_tolerance_is_relative_to_target_variance() -> None:
    problem = get_problem("gaussians:N=150")
    _, y = problem.data()
    assert y.shape == (150, 1)
    assert problem.tolerance == pytest.approx(1e-4 * y.var(correction=0).item(), rel=1e-12)


# ---------------------------------------------------------------------- autoencoder


def test_pca_reconstruction_mse_matches_sklearn() -> None:
    from sklearn.decomposition import PCA

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=gen, dtype=F64) @ torch.randn(6, 6, generator=gen, dtype=F64)
    pca = PCA(n_components=2).fit(x.numpy())
    recon = pca.inverse_transform(pca.transform(x.numpy()))
    expected = float(np.mean((x.numpy() - recon) ** 2))
    assert pca_reconstruction_mse(x, 2) == pytest.approx(expected, rel=1e-10)
    assert pca_reconstruction_mse(x, 0) == pytest.approx(x.var(dim=0, correction=0).mean().item())
    assert pca_reconstruction_mse(x, 6) < 1e-25


def test_autoencoder_reference_is_below_random_init_and_shrinks_with_bottleneck() -> None:
    references = []
    for bottleneck in (2, 3, 4):
        problem = get_problem("autoencoder", bottleneck=bottleneck)
        references.append(problem.global_loss)
        for seed in range(3):
            init_loss = problem.loss(problem.build_model(seed)).item()
            assert problem.global_loss + problem.tolerance < init_loss
    assert references[0] > references[1] > references[2] > 0
    x, y = get_problem("autoencoder").data()
    assert x.shape == (1797, 64)
    assert torch.equal(x, y)
    assert x.min() == 0 and x.max() == 1


def test_autoencoder_mean_image_plateau_is_the_rank_zero_error() -> None:
    problem = get_problem("autoencoder")
    model = problem.build_model(0)
    x, _ = problem.data()
    with torch.no_grad():
        model[-1].weight.zero_()
        model[-1].bias.copy_(x.mean(dim=0))
    loss = problem.loss(model).item()
    assert loss == pytest.approx(pca_reconstruction_mse(x, 0), rel=1e-12)
    assert not problem.solved(loss)


def test_autoencoder_architecture() -> None:
    model = get_problem("autoencoder:hidden=16,bottleneck=3").build_model(0)
    shapes = [tuple(p.shape) for name, p in model.named_parameters() if name.endswith("weight")]
    assert shapes == [(16, 64), (3, 16), (16, 3), (64, 16)]


# ---------------------------------------------------------------------- digits


def test_digits_split() -> None:
    problem = get_problem("digits")
    assert problem.splits == ("train", "test")
    (x_tr, y_tr), (x_te, y_te) = problem.data("train"), problem.data("test")
    assert x_tr.shape == (1347, 64) and y_tr.shape == (1347,)
    assert x_te.shape == (450, 64) and y_te.shape == (450,)
    assert y_tr.dtype == torch.int64
    # Stratified: every class has about 25% of its examples in the test split.
    counts_tr, counts_te = torch.bincount(y_tr, minlength=10), torch.bincount(y_te, minlength=10)
    assert ((counts_te / (counts_tr + counts_te) - 0.25).abs() < 0.02).all()
    # Disjoint, together the whole data set, and the same on every call.
    rows_tr = {tuple(r) for r in x_tr.tolist()}
    rows_te = {tuple(r) for r in x_te.tolist()}
    from sklearn.datasets import load_digits

    rows_all = {tuple((r / 16.0).tolist()) for r in load_digits().data}
    assert rows_tr | rows_te == rows_all
    everything = torch.tensor(load_digits().data / 16.0, dtype=F64)
    torch.testing.assert_close(torch.cat([x_tr, x_te]).sum(0), everything.sum(0))
    assert torch.equal(get_problem("digits").data("test")[0], x_te)


def test_digits_accuracy_helper() -> None:
    problem = get_problem("digits")
    model = problem.build_model(0)
    accuracy = problem.accuracy(model, "test")
    assert 0.0 <= accuracy <= 0.3  # untrained: near chance
    # A "model" that returns one-hot labels is perfectly accurate.
    _, y_te = problem.data("test")
    x_te, _ = problem.data("test")
    lookup = {tuple(x.tolist()): int(label) for x, label in zip(x_te, y_te, strict=True)}

    class Oracle(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            labels = torch.tensor([lookup[tuple(r.tolist())] for r in x])
            return torch.nn.functional.one_hot(labels, 10).to(F64)

    assert problem.accuracy(Oracle(), "test") == 1.0


# ---------------------------------------------------------------------- spirals and xor


def test_spirals_data() -> None:
    problem = get_problem("spirals:N=101")
    x, y = problem.data()
    assert x.shape == (101, 2) and y.shape == (101, 1)
    assert int(y.sum()) == 50
    assert x.abs().max() <= 1.0
    # With an even N, class 1 is class 0 rotated by pi (noise 0).
    x_even = get_problem("spirals:N=100").data()[0]
    torch.testing.assert_close(x_even[50:], -x_even[:50], rtol=0, atol=1e-13)
    noisy = get_problem("spirals:N=101,noise=0.05").data()[0]
    assert 0.02 < (noisy - x).std() < 0.08
    assert torch.equal(noisy, get_problem("spirals:N=101,noise=0.05").data()[0])
    assert problem.tolerance == pytest.approx(math.log(2) / 101)


def test_spirals_accuracy_matches_sign_of_logit() -> None:
    problem = get_problem("spirals")
    model = problem.build_model(0)
    x, y = problem.data()
    with torch.no_grad():
        expected = ((model(x) > 0).to(F64) == y).to(F64).mean().item()
    assert problem.accuracy(model) == expected


def test_xor_data_and_stuck_levels() -> None:
    problem = get_problem("xor")
    x, y = problem.data()
    assert x.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert y.squeeze(1).tolist() == [0, 1, 1, 0]
    half = torch.full((4, 1), 0.5, dtype=F64)
    assert problem.loss_fn(half, y).item() == 0.25
    two_fitted = torch.tensor([[0.0], [1.0], [0.5], [0.5]], dtype=F64)
    assert problem.loss_fn(two_fitted, y).item() == 0.125
    assert not problem.solved(0.125)
    names = [name for name, _ in problem.build_model(0).named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]


def _hidden_units(model: torch.nn.Module) -> torch.Tensor:
    """Each hidden unit's incoming weights, bias and outgoing weight: one row per unit."""
    return torch.cat([model[0].weight, model[0].bias[:, None], model[2].weight.T], dim=1)


@pytest.mark.parametrize("hidden", [2, 3])
def test_xor_symmetric_start_copies_the_first_unit(hidden: int) -> None:
    for seed in range(5):
        default = get_problem("xor", hidden=hidden).build_model(seed)
        symmetric = get_problem("xor", hidden=hidden, symmetric=True).build_model(seed)
        units, default_units = _hidden_units(symmetric), _hidden_units(default)
        assert torch.equal(units, units[:1].expand_as(units))  # copies, bit for bit
        assert torch.equal(units[0], default_units[0])  # the first unit is the default's
        assert torch.equal(symmetric[2].bias, default[2].bias)
        assert (default_units[1:] != default_units[:1]).any(dim=1).all()  # default: not copies
    assert get_problem("xor:symmetric=true").spec == "xor:hidden=2,symmetric=True"


@pytest.mark.parametrize("hidden", [2, 3])
def test_xor_symmetric_start_holds_gradient_descent_and_weight_noise_leaves_it(
        hidden: int) -> None:
    from synaprune import SynaPrune

    problem = get_problem("xor", hidden=hidden, symmetric=True)
    x, y = problem.data()

    def train(make_optimizer, steps: int) -> torch.nn.Module:
        model = problem.build_model(0)
        optimizer = make_optimizer(model.parameters())
        for _ in range(steps):
            optimizer.zero_grad()
            problem.loss_fn(model(x), y).backward()
            optimizer.step()
        return model

    gd = train(lambda p: torch.optim.SGD(p, lr=2.0), 2000)
    units = _hidden_units(gd).detach()
    # The units' gradients are equal, so they stay copies (to rounding: a BLAS may sum the
    # rows of a product in different orders), and the 2-1-1 network they make cannot fit XOR.
    torch.testing.assert_close(units, units[:1].expand_as(units), rtol=1e-9, atol=1e-12)
    assert not problem.solved(problem.loss_fn(gd(x), y).item())
    noisy = train(lambda p: SynaPrune(p, lr=2.0, preset="escape", total_steps=100, seed=0), 1)
    units = _hidden_units(noisy).detach()
    assert (units[1:] - units[:1]).abs().max() > 1e-3  # noise drawn per weight splits them
