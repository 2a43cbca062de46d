"""Exceptions shared by the command-line modules (a leaf: it imports nothing of synaprune)."""

__all__ = ["UsageError"]


class UsageError(Exception):
    """A problem with what the user asked for; the ``synaprune`` command prints it as one line
    and exits with status 2."""
