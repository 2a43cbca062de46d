"""The top-level ``synaprune`` command: --version, and UsageError from its leaf module."""

from __future__ import annotations

import importlib.metadata

import pytest

import synaprune
from synaprune import errors
from synaprune.cli import main


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    # One number, from two places that must agree: the installed metadata and __version__.
    assert out == f"synaprune {importlib.metadata.version('synaprune')}\n"
    assert out == f"synaprune {synaprune.__version__}\n"


def test_usage_error_is_one_class_printed_as_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from synaprune.bench import cli as bench_cli
    from synaprune.diagnose import cli as diagnose_cli

    assert bench_cli.UsageError is diagnose_cli.UsageError is errors.UsageError
    assert main(["results", "--db", "no-such.db"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err
