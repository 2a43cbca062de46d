"""diagnose(): each condition built on purpose is named, and every statistic matches a
brute-force float64 reference (dense Hessian, per-example loop)."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
from cases import (
    DT,
    F,
    dense_hessian,
    flat_params,
    mlp,
    per_example_grads,
    regression,
    saddle,
    trained_minimum,
)
from torch import nn

from synaprune.diagnose import Diagnosis, diagnose
from synaprune.diagnose._diagnose import CANCELLED_C, NEG_EIG_TOL
from synaprune.probes import PerExampleGradStats


def _random_tanh():
    x, y = regression()
    return mlp([4, 6, 1], nn.Tanh, seed=3), x, y


CASES = {"random-tanh": _random_tanh, "saddle": saddle, "minimum": trained_minimum}


@pytest.fixture(scope="module")
def built():
    out = {}
    for name, make in CASES.items():
        model, x, y = make()
        out[name] = (model, x, y, diagnose(model, F.mse_loss, (x, y), k=4))
    return out


def test_public_api():
    # importlib, not ``import synaprune.diagnose as sd``: the top-level package may export the
    # function ``diagnose`` under the same name as this subpackage.
    sd = importlib.import_module("synaprune.diagnose")
    for name in sd.__all__:
        assert hasattr(sd, name), name
    assert {"diagnose", "Diagnosis", "TrainingMonitor", "every"} <= set(sd.__all__)


@pytest.mark.parametrize("case", list(CASES))
def test_statistics_match_brute_force(built, case):
    model, x, y, d = built[case]
    h = dense_hessian(model, F.mse_loss, x, y)
    eig = torch.linalg.eigvalsh(h)
    scale = float(eig.abs().max())
    gi = per_example_grads(model, F.mse_loss, x, y)  # [N, n]
    gbar = gi.mean(0)
    with torch.no_grad():
        loss = float(F.mse_loss(model(x), y))
    assert d.loss == pytest.approx(loss, rel=1e-12)
    assert d.grad_norm == pytest.approx(float(gbar.norm()), rel=1e-8, abs=1e-14)
    assert d.param_norm == pytest.approx(float(flat_params(model).norm()), rel=1e-12)
    assert d.num_params == h.shape[0]
    # curvature along the gradient
    assert d.gg == pytest.approx(float(gbar @ gbar), rel=1e-6, abs=1e-24)
    assert d.ghg == pytest.approx(float(gbar @ h @ gbar), rel=1e-6, abs=1e-12 * scale)
    # extreme eigenvalues, k = 4 from each end
    tol = 1e-5 * scale
    assert d.eigenvalues_smallest == pytest.approx(eig[:4].tolist(), abs=tol)
    assert d.eigenvalues_largest == pytest.approx(eig[-4:].tolist(), abs=tol)
    # cancellation, per-example loop
    mean_sq = float(gi.pow(2).sum(1).mean())
    assert d.cancellation == pytest.approx(float(gbar.norm()) / math.sqrt(mean_sq), rel=1e-6,
                                           abs=1e-12)
    r = gi.pow(2).mean(0).sqrt()
    c = torch.where(r == 0, torch.ones_like(r), gbar.abs() / r)
    assert d.cancelled_share == pytest.approx(float((c < CANCELLED_C).double().mean()))


@pytest.mark.parametrize("case", list(CASES))
def test_layer_statistics_match_direct(built, case):
    model, x, y, d = built[case]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    outs = []
    h = x
    for m in model:
        h = m(h)
        if isinstance(m, nn.Linear):
            h.retain_grad()
            outs.append(h)
    model.zero_grad()
    F.mse_loss(h, y).backward()
    assert [layer.name for layer in d.layers] == ["0", "2"]
    for layer, lin, out in zip(d.layers, linears, outs, strict=True):
        w = lin.weight.detach()
        assert layer.grad_norm == pytest.approx(float(lin.weight.grad.norm()), rel=1e-10,
                                                abs=1e-15)
        assert layer.weight_norm == pytest.approx(float(w.norm()))
        assert layer.weight_gain == pytest.approx(float(w.pow(2).mean().sqrt())
                                                  * math.sqrt(w.shape[1]))
        # backward signal of the sum of per-example losses, rms over examples and units
        ref = float((out.grad * x.shape[0]).pow(2).mean().sqrt())
        assert layer.backward_rms == pytest.approx(ref, rel=1e-10, abs=1e-15)
        if w.shape[0] == w.shape[1]:
            assert layer.spectral == pytest.approx(float(torch.linalg.eigvals(w).abs().max()))
        else:
            assert layer.spectral == pytest.approx(float(torch.linalg.svdvals(w)[0]))
    model.zero_grad()


def test_minimum_is_named_with_hessian_evidence(built):
    model, x, y, d = built["minimum"]
    eig = torch.linalg.eigvalsh(dense_hessian(model, F.mse_loss, x, y))
    assert float(eig.min()) > 0  # the reference agrees: a strict minimum
    assert d.kind == "local minimum"
    assert d.grad_norm < 1e-8
    assert "local-minimum" in d.codes()
    assert "noise" in d.finding("local-minimum").setting


def test_saddle_is_named_with_its_index(built):
    model, x, y, d = built["saddle"]
    eig = torch.linalg.eigvalsh(dense_hessian(model, F.mse_loss, x, y))
    negatives = int((eig < -NEG_EIG_TOL * eig.abs().max()).sum())
    assert negatives >= 1
    assert d.grad_norm < 1e-12
    assert d.kind == "saddle"
    assert d.num_negative == negatives
    assert d.index == pytest.approx(negatives / eig.numel())
    assert not d.index_is_lower_bound
    assert 'noise_trigger="stall"' in d.finding("saddle").setting
    assert f"index {d.index:.3g}" in d.format()


def test_saddle_index_is_a_lower_bound_when_k_is_too_small():
    model, x, y = saddle()
    d = diagnose(model, F.mse_loss, (x, y), k=1)
    assert d.kind == "saddle" and d.num_negative == 1 and d.index_is_lower_bound


def test_random_init_is_not_a_critical_point(built):
    _, _, _, d = built["random-tanh"]
    assert d.kind == "not a critical point"
    assert d.relative_grad > 1e-3
    assert not {"local-minimum", "saddle", "plateau"} & set(d.codes())


def test_plateau_of_a_deep_linear_chain_at_zero():
    # f(x) = w4 w3 w2 w1 x with every w = 0: the gradient and the whole Hessian vanish (every
    # second derivative of the product keeps a zero factor), the classic deep-linear plateau.
    x, y = regression(n=32, d=1)
    model = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(4)]).double()
    for m in model:
        nn.init.zeros_(m.weight)
    d = diagnose(model, F.mse_loss, (x, y), k=1)
    h = dense_hessian(model, F.mse_loss, x, y)
    assert float(h.abs().max()) == 0.0
    assert d.kind == "plateau"
    assert d.eigenvalues_smallest == [0.0] and d.eigenvalues_largest == [0.0]
    assert 'noise_trigger="stall"' in d.finding("plateau").setting


def test_dead_relus():
    x, y = regression()
    model = mlp([4, 16, 16, 1], nn.ReLU)
    d0 = diagnose(model, F.mse_loss, (x, y))
    assert "dead-units" not in d0.codes()  # control
    with torch.no_grad():
        model[2].bias.fill_(-50.0)
    d = diagnose(model, F.mse_loss, (x, y))
    with torch.no_grad():
        h1 = model[1](model[0](x))
        h2 = model[3](model[2](h1))
    assert d.dead_units["1"] == pytest.approx(float((h1 <= 0).all(0).double().mean()))
    assert d.dead_units["3"] == 1.0 == float((h2 <= 0).all(0).double().mean())
    f = d.finding("dead-units")
    assert f is not None and f.evidence["module"] == "3"
    assert "LeakyReLU" in f.remedy


def test_vanishing_gradients_in_a_deep_sigmoid_net():
    x, y = regression()
    shallow = diagnose(mlp([4, 16, 1], nn.Sigmoid), F.mse_loss, (x, y))
    assert "vanishing-gradients" not in shallow.codes()  # control
    d = diagnose(mlp([4] + [16] * 10 + [1], nn.Sigmoid), F.mse_loss, (x, y), k=2)
    f = d.finding("vanishing-gradients")
    assert f is not None
    ratio = d.layers[0].backward_rms / d.layers[-1].backward_rms
    assert ratio < 1e-3
    assert f.evidence["backward_rms_ratio_to_last"]["0"] == pytest.approx(ratio)
    assert "normalisation" in f.remedy.lower() and "skip" in f.remedy


def test_exploding_weights():
    x, y = regression()
    model = mlp([4, 16, 16, 16, 16, 1], nn.ReLU)
    assert not {"exploding-gradients", "spectral-radius"} & set(
        diagnose(model, F.mse_loss, (x, y), k=2).codes())  # control
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(20.0)
    d = diagnose(model, F.mse_loss, (x, y), k=2)
    assert "exploding-gradients" in d.codes()
    assert "spectral-radius" in d.codes()
    assert "clipping" in d.finding("exploding-gradients").remedy
    radius = float(torch.linalg.eigvals(model[2].weight.detach()).abs().max())
    assert d.finding("spectral-radius").evidence["2"] == pytest.approx(radius)


def test_tiny_weights():
    x, y = regression()
    model = mlp([4, 8, 1], nn.Tanh)
    with torch.no_grad():
        model[0].weight.mul_(1e-3)
    d = diagnose(model, F.mse_loss, (x, y))
    f = d.finding("tiny-weights")
    assert f is not None and set(f.evidence) == {"0"}
    assert "noise_eps" in f.setting


def test_unscaled_inputs():
    x, y = regression()
    model = mlp([4, 8, 1], nn.Tanh)
    assert "unscaled-inputs" not in diagnose(model, F.mse_loss, (x, y)).codes()  # control
    d = diagnose(model, F.mse_loss, (x * 1e3 + 5e3, y))
    f = d.finding("unscaled-inputs")
    assert f is not None and "standardisation" in f.remedy
    assert d.inputs["max_std"] == pytest.approx(float((x * 1e3).std(0).max()))
    assert d.inputs["max_abs_mean"] == pytest.approx(float((x * 1e3 + 5e3).mean(0).abs().max()))


def test_ill_conditioned_valley():
    # Linear regression with feature scales 1 and 1000: the stiff coordinate almost solved, the
    # soft one far off, so the gradient points along the steep wall.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g, dtype=DT) * torch.tensor([1.0, 1e3], dtype=DT)
    w_star = torch.tensor([[1.0, 0.002]], dtype=DT)
    y = x @ w_star.T
    model = nn.Linear(2, 1, bias=False).double()
    cov = x.T @ x / x.shape[0]
    # soft error 1; stiff error chosen so that the stiff gradient is small but dominant
    delta = torch.tensor([[1.0, float(-cov[1, 0] / cov[1, 1]) + 1e-5]], dtype=DT)
    with torch.no_grad():
        model.weight.copy_(w_star + delta)
    d = diagnose(model, F.mse_loss, (x, y), k=1)
    assert d.kind == "ill-conditioned valley"
    assert d.relative_best_decrease < 1e-3
    h = dense_hessian(model, F.mse_loss, x, y)
    gvec = torch.autograd.grad(F.mse_loss(model(x), y), model.weight)[0].reshape(-1)
    best = float(gvec @ gvec) ** 2 / (2 * float(gvec @ h @ gvec))
    assert d.best_step_decrease == pytest.approx(best, rel=1e-6)
    assert {"ill-conditioned", "unscaled-inputs"} <= set(d.codes())


def test_history_trend_and_negative_test():
    model, x, y = _random_tanh()
    flat = diagnose(model, F.mse_loss, (x, y), history={"grad_norm": [1.0, 1.1, 0.9, 1.2],
                                                          "loss": [2.0, 1.5, 1.2, 1.0]})
    assert "gradient-not-shrinking" in flat.codes()
    assert flat.history["grad_norm_ratio"] == pytest.approx(1.2)
    assert flat.history["loss_last"] == 1.0
    shrinking = diagnose(model, F.mse_loss, (x, y),
                         history={"grad_norm": [1.0, 0.1, 0.01, 0.001]})
    assert "gradient-not-shrinking" not in shrinking.codes()
    assert shrinking.history["grad_norm_log10_slope_per_step"] == pytest.approx(-1.0)


def test_high_cancellation_names_blend(built):
    _, _, _, d = built["minimum"]
    assert d.cancellation < 1e-6
    f = d.finding("high-cancellation")
    assert f is not None and 'aggregation="blend"' in f.setting


def test_report_is_json_ready_and_readable(built):
    for _, _, _, d in built.values():
        assert isinstance(d, Diagnosis)
        text = json.dumps(d.to_dict(), allow_nan=False)
        back = json.loads(text)
        assert back["kind"] == d.kind and len(back["findings"]) == len(d.findings)
        out = d.format()
        assert out.startswith(f"Verdict: {d.kind}")
        for f in d.findings:
            assert f.remedy and f.code in out


def test_leaves_gradients_and_statistics_untouched():
    x, y = regression()
    model = mlp([4, 6, 1], nn.Tanh)
    probe = PerExampleGradStats(model)
    F.mse_loss(model(x[:8]), y[:8]).backward()
    before = [(p.grad.clone(), p.grad_sumsq.clone(), p.grad_batch_size)
              for p in model.parameters()]
    d = diagnose(model, F.mse_loss, (x, y))  # the probe stays attached
    for p, (g, sq, b) in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.grad, g) and torch.equal(p.grad_sumsq, sq)
        assert p.grad_batch_size == b
    probe.remove()
    gi = per_example_grads(model, F.mse_loss, x, y)
    ref = float(gi.mean(0).norm()) / math.sqrt(float(gi.pow(2).sum(1).mean()))
    assert d.cancellation == pytest.approx(ref, rel=1e-8)


def test_accepts_a_list_of_batches():
    model, x, y = _random_tanh()
    whole = diagnose(model, F.mse_loss, (x, y), k=2)
    split = diagnose(model, F.mse_loss, [(x[:32], y[:32]), (x[32:], y[32:])], k=2)
    assert split.loss == pytest.approx(whole.loss)
    assert split.eigenvalues_largest == pytest.approx(whole.eigenvalues_largest, rel=1e-6)
    with pytest.raises(ValueError):
        diagnose(model, F.mse_loss, 3)


TINY = {
    # (widths, activation): n parameters from 2 to 13, k = 5 from each end asks for more than n
    "n=2 linear 1-1": ([1, 1], nn.Identity),
    "n=3 linear 2-1": ([2, 1], nn.Identity),
    "n=7 tanh 1-2-1": ([1, 2, 1], nn.Tanh),
    "n=9 sigmoid 2-2-1": ([2, 2, 1], nn.Sigmoid),
    "n=13 tanh 4-2-1": ([4, 2, 1], nn.Tanh),
}


@pytest.mark.parametrize("case", list(TINY))
def test_tiny_models_get_exact_extremes_from_lanczos(case):
    """k from each end is clipped to n // 2; at 2k == n Lanczos' basis spans the whole space.
    Every eigenvalue Lanczos returns matches the dense Hessian's (no fallback, no note)."""
    widths, act = TINY[case]
    x, y = regression(n=16, d=widths[0], seed=2)
    model = mlp(widths, act, seed=1)
    d = diagnose(model, F.mse_loss, (x, y), k=5)
    eig = torch.linalg.eigvalsh(dense_hessian(model, F.mse_loss, x, y))
    n = eig.numel()
    kk = min(5, n // 2)
    assert d.num_params == n and len(d.eigenvalues_smallest) == len(d.eigenvalues_largest) == kk
    assert d.eigen_converged and d.notes == []
    tol = 1e-6 * float(eig.abs().max())
    assert d.eigenvalues_smallest == pytest.approx(eig[:kk].tolist(), abs=tol)
    assert d.eigenvalues_largest == pytest.approx(eig[n - kk:].tolist(), abs=tol)


def test_one_parameter_model_uses_its_one_by_one_hessian():
    x, y = regression(n=16, d=1)
    model = nn.Sequential(nn.Linear(1, 1, bias=False)).double()
    d = diagnose(model, F.mse_loss, (x, y), k=5)
    h = dense_hessian(model, F.mse_loss, x, y)
    assert d.num_params == 1
    assert d.eigenvalues_smallest == d.eigenvalues_largest == pytest.approx([float(h[0, 0])])
