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


@pytest.fixture
def unwritable():
    """Make a path really unwritable for the code under test, root included.

    Yields ``(shared, deny)``: ``shared`` is a fresh folder that every user may traverse and
    write; ``with deny(path):`` runs its body unable to write ``path`` (a file made 0444, or a
    folder made 0555; the caller makes everything else writable, e.g. the file in a denied
    folder 0666). Permission bits do not stop root, so as root the body runs with the effective
    uid and gid of ``nobody`` (65534), restored afterwards; the files belong to root, so their
    bits apply. The body is skipped, with the reason, only if writing still succeeds.
    """
    import contextlib
    import os
    import shutil
    import tempfile
    from pathlib import Path

    shared = Path(tempfile.mkdtemp(prefix="synaprune-ro-"))
    shared.chmod(0o777)

    @contextlib.contextmanager
    def deny(path: Path):
        folder = path.is_dir()
        path.chmod(0o555 if folder else 0o444)
        root = os.geteuid() == 0
        if root:
            os.setegid(65534)
            os.seteuid(65534)
        try:
            try:  # check that writing really fails
                with open(path / ".probe" if folder else path, "xb" if folder else "ab"):
                    pass
            except PermissionError:
                pass
            else:
                pytest.skip(f"writing {path} succeeded despite its permissions")
            yield
        finally:
            if root:
                os.seteuid(0)
                os.setegid(0)
            path.chmod(0o777 if folder else 0o666)

    yield shared, deny
    shutil.rmtree(shared)
