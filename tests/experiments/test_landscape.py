"""landscape: theta* is a critical point with a dense-Hessian reference; the quick version."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from synaprune.bench import wilson_interval
from synaprune.experiments import landscape as exp
from synaprune.problems._base import mlp


def test_theta_star_is_a_saddle_dense_reference():
    x, y = exp._data()
    model = mlp([64, 4, 10], torch.nn.Tanh, torch.Generator().manual_seed(0))
    saddle = exp._saddle(model, y)
    names = list(saddle)
    flat = torch.cat([saddle[n].reshape(-1) for n in names])

    def loss(vector):
        params, start = {}, 0
        for n in names:
            size = saddle[n].numel()
            params[n] = vector[start:start + size].reshape(saddle[n].shape)
            start += size
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    grad = torch.autograd.functional.jacobian(loss, flat)
    assert grad.abs().max().item() < 1e-14  # a critical point (rounding of log/softmax)
    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))
    assert eig[0] < -1e-3 and eig[-1] > 1e-3  # both signs: a saddle
    # The experiment's Lanczos at the same point, on the same (width-4) model.
    from synaprune.curvature import HessianOperator, lanczos

    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(saddle[n])
    res = lanczos(HessianOperator(model, F.cross_entropy, (x, y)), k=1, which="both",
                  generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.eigenvalues, eig[[0, -1]], rtol=1e-6, atol=0)


def test_quick_version(tmp_path):
    rows = [{**c, **exp.run_cell(c)} for c in exp.cells(quick=True)]
    summary = exp.summarize(rows)
    escaped = sum(r["final_loss"] < r["saddle_loss"] / 2 for r in rows)
    assert summary["escaped"] == escaped
    assert (summary["escape_low"], summary["escape_high"]) == wilson_interval(escaped, len(rows))
    for r in rows:
        assert r["start_loss"] == pytest.approx(r["saddle_loss"], abs=1e-3)  # next to theta*
        assert r["loss_0"] == r["start_loss"] and r["step_0"] == 0
    path = tmp_path / "fig.png"
    exp.plot(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
