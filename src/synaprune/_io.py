"""Writing output files atomically, with the permissions the user's umask gives."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_output"]


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success, rename it onto ``path``.

    A reader never sees a half-written file, and a failure leaves an existing ``path``
    untouched. The temporary file is created empty with mode ``0o666`` masked by the process's
    umask (``0o644`` under umask 022), as ``open(path, "w")`` would create ``path``; unlike
    :func:`tempfile.mkstemp`, whose files are always ``0o600``. The caller writes it by name
    (e.g. ``fig.savefig(tmp)``), which keeps those permissions. Missing parent folders are
    created.

    Args:
        path: The file to write.

    Yields:
        The temporary file's path, in the same folder (so the rename is atomic), with the
        same suffix (so writers that pick a format from the suffix still do).

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "note.txt"
        >>> with atomic_output(target) as tmp:
        ...     _ = tmp.write_text("hello")
        >>> target.read_text()
        'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        break
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
