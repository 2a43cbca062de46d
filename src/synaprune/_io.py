"""Writing output files and folders atomically, with the permissions the user's umask gives."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_directory", "atomic_output"]


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
    tmp = _fresh(path, lambda: f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}",
                 lambda t: os.close(os.open(t, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a new empty folder next to ``path``; on success, it replaces ``path``.

    The folder's contents are written in full before any reader can see them under ``path``;
    a failure (an exception in the block) removes the temporary folder and leaves an existing
    ``path`` as it was. The replacement is two renames (the old folder aside, the new one in
    place; POSIX has no atomic exchange of non-empty folders), then the old folder is deleted:
    between the renames ``path`` is briefly absent, never half-written, and if the second
    rename fails the old folder is put back. The new folder gets mode ``0o777`` masked by the
    umask, as ``mkdir`` would give. The caller decides whether ``path`` may be replaced at all.

    Args:
        path: The folder to write.

    Yields:
        The temporary folder's path, in the same parent folder (so the renames stay within one
        file system).

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "report"
        >>> with atomic_directory(target) as tmp:
        ...     _ = (tmp / "index.html").write_text("hi")
        >>> (target / "index.html").read_text()
        'hi'
    """
    path = Path(path)
    tmp = _fresh(path, lambda: f".{path.name}.{secrets.token_hex(4)}.tmp",
                 lambda t: t.mkdir(0o777))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fresh(path: Path, name: Callable[[], str], create: Callable[[Path], object]) -> Path:
    """Create a new entry beside ``path`` (same folder, so a rename onto ``path`` is atomic)
    under a random ``name()``, retrying on a clash; its parent folders are made first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(name())
        try:
            create(tmp)
        except FileExistsError:
            continue
        return tmp
