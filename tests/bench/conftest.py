"""Shared fixtures of the bench tests: a tiny exact problem where some seeds diverge."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from synaprune.problems import Problem


class _Quartic(nn.Module):
    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        w = torch.empty(2, dtype=torch.float64).uniform_(-2.0, 2.0, generator=generator)
        self.w = nn.Parameter(w)


def quartic_problem() -> Problem:
    """Loss sum(w**4) / 4 with w ~ U[-2, 2]^2: under gd with lr=1, |w| > sqrt(2) blows up to
    inf within a few steps (diverged), smaller |w| creep towards 0 (success or budget)."""
    return Problem(
        name="quartic", options={}, global_loss=0.0, tolerance=1e-3, per_example=False,
        description="test problem", _make_model=_Quartic,
        _exact_loss=lambda pb: pb["w"].pow(4).sum() / 4,
    )


@pytest.fixture
def quartic() -> Problem:
    return quartic_problem()



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
