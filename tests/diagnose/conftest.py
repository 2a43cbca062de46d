"""Diagnose tests run single-threaded: the problems are tiny, and on a shared 2-core machine
OpenMP's second thread only waits."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_JIT_NOISE = pytest.mark.filterwarnings(
    # torch.func.hessian's forward mode scripts its decompositions on first use (torch 2.13).
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)


def pytest_collection_modifyitems(items):
    for item in items:
        if "diagnose" in item.path.parts:
            item.add_marker(_JIT_NOISE)
