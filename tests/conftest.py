"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The test problems are tiny: one intra-op thread is fastest, and on a shared 2-core machine
    OpenMP's second thread mostly waits (a 512 x 64 matmul measured 0.3 ms on one thread and
    30 ms on two under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
