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


@pytest.fixture
def umask():
    """Set the process umask for one test: ``umask(0o027)``; restored afterwards."""
    import os

    before = os.umask(0o022)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(before)
