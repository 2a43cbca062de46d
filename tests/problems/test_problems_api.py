"""The public names import, and the docstring examples run."""

from __future__ import annotations

import doctest

import pytest

import synaprune.problems
from synaprune.problems import _base, _registry, _teacher_student


def test_public_names() -> None:
    assert sorted(synaprune.problems.__all__) == [
        "Problem",
        "get_problem",
        "list_problems",
        "pca_reconstruction_mse",
        "relu_kernel",
    ]
    for name in synaprune.problems.__all__:
        assert getattr(synaprune.problems, name) is not None


@pytest.mark.parametrize(
    "module", [synaprune.problems, _base, _registry, _teacher_student], ids=lambda m: m.__name__
)
def test_docstring_examples(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
