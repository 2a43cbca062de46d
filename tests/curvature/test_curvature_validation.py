"""Bad inputs raise ValueError up front, with a message that says what is wrong."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from curvature_cases import DTYPE, PROBLEMS
from torch import nn

import synaprune.curvature as curvature
from synaprune.curvature import (
    HessianOperator,
    gaussian_density,
    gradient_curvature,
    hutchinson_trace,
    lanczos,
    spectral_density,
)


def test_public_names_import():
    for name in curvature.__all__:
        assert getattr(curvature, name) is not None
    assert sorted(curvature.__all__) == sorted(set(curvature.__all__))


@pytest.fixture
def setup():
    problem = PROBLEMS["tanh-mlp-mse"]()
    op = HessianOperator(problem.model, problem.loss_fn, (problem.x, problem.y))
    return problem, op


OPERATOR_CASES = {
    "unknown-method": (dict(method="double-backward"), "Invalid method"),
    "empty-params": (dict(params=[]), "empty"),
    "frozen-param": (dict(params=[torch.zeros(3, dtype=DTYPE)]), "does not require grad"),
    "single-tensor-params": (dict(params=nn.Parameter(torch.zeros(2))), "not a single tensor"),
    "data-not-batches": (dict(data=torch.zeros(3, 2)), "iterable of"),
    "empty-data": (dict(data=[]), "no batches"),
    "batch-not-pair": (dict(data=[(torch.zeros(2, 4),)]), "batch 0 is not an"),
    "length-mismatch": (
        dict(data=(torch.zeros(5, 4, dtype=DTYPE), torch.zeros(4, 2))),
        "x has 5 examples but y has 4",
    ),
    "empty-batch": (dict(data=(torch.zeros(0, 4, dtype=DTYPE), torch.zeros(0, 2))), "empty"),
    "non-scalar-loss": (dict(loss_fn=lambda out, y: (out - y) ** 2), "scalar"),
    "constant-loss": (dict(loss_fn=lambda out, y: torch.tensor(1.0)), "does not depend"),
}


@pytest.mark.parametrize(
    ("kwargs", "match"), list(OPERATOR_CASES.values()), ids=list(OPERATOR_CASES)
)
def test_operator_rejects(setup, kwargs, match):
    problem, _ = setup
    args = dict(data=(problem.x, problem.y), loss_fn=problem.loss_fn)
    args.update(kwargs)
    data, loss_fn = args.pop("data"), args.pop("loss_fn")
    with pytest.raises(ValueError, match=match):
        HessianOperator(problem.model, loss_fn, data, **args)


def test_operator_rejects_mixed_dtypes_and_foreign_params_for_torch_func():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[1].double()
    x, y = torch.zeros(3, 2), torch.zeros(3, 1)
    with pytest.raises(ValueError, match="all must agree"):
        HessianOperator(model, F.mse_loss, (x, y))
    model = nn.Linear(2, 1)
    foreign = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="belong to model"):
        HessianOperator(model, F.mse_loss, (x, y), params=[foreign], method="forward-over-reverse")


VECTOR_CASES = {
    "flat-too-short": (lambda op: torch.zeros(op.dim - 1, dtype=DTYPE), r"shape \[44\]"),
    "flat-2d": (lambda op: torch.zeros(op.dim, 1, dtype=DTYPE), r"shape \[44\]"),
    "list-too-short": (
        lambda op: [torch.zeros(s, dtype=DTYPE) for s in op.shapes[:-1]],
        "expected 4 tensors",
    ),
    "list-wrong-shape": (
        lambda op: [torch.zeros(s, dtype=DTYPE) for s in op.shapes[::-1]],
        r"vector\[0\] has shape",
    ),
    "not-a-vector": (lambda op: 3.0, "must be a tensor"),
}


@pytest.mark.parametrize(("make", "match"), list(VECTOR_CASES.values()), ids=list(VECTOR_CASES))
def test_products_reject_bad_vectors(setup, make, match):
    _, op = setup
    with pytest.raises(ValueError, match=match):
        op.matvec(make(op))
    assert op.num_products == 0  # nothing was computed


SOLVER_CASES = {
    "k-zero": (lambda op: lanczos(op, 0), "Invalid k"),
    "k-too-large": (lambda op: lanczos(op, 23, which="both"), "asks for 46"),
    "which": (lambda op: lanczos(op, 1, which="LM"), "Invalid which"),
    "tol": (lambda op: lanczos(op, 1, tol=0.0), "Invalid tol"),
    "maxiter": (lambda op: lanczos(op, 3, which="both", maxiter=5), "Invalid maxiter"),
    "ncv": (lambda op: lanczos(op, 3, ncv=4), "Invalid ncv"),
    "v0-shape": (lambda op: lanczos(op, 1, v0=torch.ones(3, dtype=DTYPE)), "v0 must be"),
    "v0-zero": (lambda op: lanczos(op, 1, v0=torch.zeros(44, dtype=DTYPE)), "non-zero"),
    "not-an-operator": (lambda op: lanczos(object(), 1), "operator must be"),
    "non-square": (lambda op: lanczos(torch.zeros(3, 4, dtype=DTYPE), 1), "square"),
    "non-symmetric": (
        lambda op: lanczos(torch.triu(torch.ones(4, 4, dtype=DTYPE)), 1),
        "symmetric",
    ),
    "hutchinson-probes": (lambda op: hutchinson_trace(op, 1), "num_probes"),
    "slq-steps": (lambda op: spectral_density(op, num_steps=0), "num_steps"),
    "slq-probes": (lambda op: spectral_density(op, num_probes=0), "num_probes"),
    "density-sigma": (
        lambda op: gaussian_density(torch.zeros(2), torch.ones(2), torch.zeros(3), sigma=0.0),
        "sigma",
    ),
    "density-shapes": (
        lambda op: gaussian_density(torch.zeros(2), torch.ones(3), torch.zeros(3), sigma=1.0),
        "one size",
    ),
    "curvature-no-gradient": (
        lambda op: gradient_curvature(torch.eye(2, dtype=DTYPE)),
        "gradient is required",
    ),
    "curvature-gradient-shape": (lambda op: gradient_curvature(op, torch.ones(3)), "size"),
}


@pytest.mark.parametrize(("call", "match"), list(SOLVER_CASES.values()), ids=list(SOLVER_CASES))
def test_solvers_reject(setup, call, match):
    _, op = setup
    with pytest.raises(ValueError, match=match):
        call(op)


@pytest.mark.parametrize(
    "module",
    ["hvp", "lanczos", "trace", "density", "gradient"],
)
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"synaprune.curvature.{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
