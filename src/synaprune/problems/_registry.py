"""Registry of problems; :func:`get_problem` reads specs with the parser shared with the methods."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from synaprune._spec import parse_spec, parse_value

from ._base import Problem
from ._digits import autoencoder_problem, digits_problem
from ._gaussians import gaussians_problem
from ._spirals import spirals_problem
from ._teacher_student import teacher_student_problem
from ._xor import xor_problem

__all__ = ["get_problem", "list_problems"]



@dataclass(frozen=True)
class _Option:
    """One option of a problem."""

    kind: type  # int, float or bool
    default: Any  # None: derived from other options (see help)
    help: str
    valid: Callable[[Any], bool] = lambda value: True
    requirement: str = ""  # human-readable form of `valid`, e.g. ">= 1"


@dataclass(frozen=True)
class _Entry:
    """A registered problem: its builder and its options."""

    build: Callable[..., Problem]
    options: dict[str, _Option]


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value >= low), f">= {low}"


def _option(kind: type, default: Any, help: str, rule: tuple | None = None) -> _Option:
    valid, requirement = rule if rule is not None else ((lambda value: True), "")
    return _Option(kind, default, help, valid, requirement)


_REGISTRY: dict[str, _Entry] = {
    "autoencoder": _Entry(
        autoencoder_problem,
        {
            "hidden": _option(int, 32, "width of the two hidden layers", _at_least(1)),
            "bottleneck": _option(
                int, 2, "code size", (lambda v: 1 <= v <= 64, "between 1 and 64")
            ),
        },
    ),
    "digits": _Entry(
        digits_problem,
        {"hidden": _option(int, 32, "hidden width of the 64-h-10 classifier", _at_least(1))},
    ),
    "gaussians": _Entry(
        gaussians_problem,
        {
            "N": _option(int, 200, "number of grid points", _at_least(1)),
            "components": _option(
                int, 4, "Gaussians in the model (the target has 4)", _at_least(4)
            ),
        },
    ),
    "spirals": _Entry(
        spirals_problem,
        {
            "N": _option(int, 200, "number of points (both classes)", _at_least(2)),
            "turns": _option(float, 2.5, "turns of each arm", (lambda v: v > 0, "> 0")),
            "noise": _option(float, 0.0, "std of Gaussian input noise", _at_least(0.0)),
            "hidden": _option(int, 8, "width of each hidden layer", _at_least(1)),
            "layers": _option(int, 2, "number of hidden layers", _at_least(1)),
        },
    ),
    "teacher-student": _Entry(
        teacher_student_problem,
        {
            "k": _option(int, 8, "student neurons", _at_least(1)),
            "n": _option(
                int, None, "teacher neurons (default k; needs n <= k, n <= d)", _at_least(1)
            ),
            "d": _option(int, None, "input dimension (default n; k > n over-parameterises)",
                         _at_least(1)),
            "exact": _option(bool, True, "closed-form population loss instead of samples"),
            "N": _option(int, 2000, "number of Gaussian samples when exact=False", _at_least(1)),
        },
    ),
    "xor": _Entry(
        xor_problem,
        {
            "hidden": _option(int, 2, "hidden sigmoid units", (lambda v: v in (2, 3), "2 or 3")),
            "symmetric": _option(bool, False, "start every hidden unit as a copy of the first"),
        },
    ),
}


def list_problems() -> list[str]:
    """Names of the registered problems, sorted.

    Returns:
        E.g. ``["autoencoder", "digits", "gaussians", "spirals", "teacher-student", "xor"]``.
    """
    return sorted(_REGISTRY)


def _convert(problem: str, key: str, option: _Option, value: Any) -> Any:
    """Convert a spec string or keyword value to the option's type and check it."""
    kind_name = {int: "an integer", float: "a number", bool: "true or false"}[option.kind]
    bad = ValueError(
        f"Bad value {value!r} for option '{key}' of problem '{problem}': expected {kind_name}"
    )
    if value is None and option.default is None:
        return None
    if isinstance(value, str):  # the one parser of spec values (synaprune._spec)
        converted: Any = parse_value(value, option.kind.__name__, key=key,
                                     owner=f"problem '{problem}'")
    elif option.kind is bool:
        if not isinstance(value, bool):
            raise bad
        converted = value
    elif option.kind is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise bad
        converted = int(value)
    else:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad
        converted = float(value)
    if isinstance(converted, float) and not math.isfinite(converted):
        raise bad
    if not option.valid(converted):
        raise ValueError(
            f"Option '{key}' of problem '{problem}' must be {option.requirement}; got {converted!r}"
        )
    return converted


def _parse(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``"name:key=value,key=value"`` into the name and raw option strings."""
    name, raw = parse_spec(spec, "problem")
    if name not in _REGISTRY:
        raise ValueError(f"Unknown problem '{name}'; choose from: {', '.join(list_problems())}")
    return name, raw


def get_problem(spec: str, **options: Any) -> Problem:
    """Build a registered problem from a spec string and/or keyword options.

    The spec is a name optionally followed by ``:key=value,key=value``; values are read as
    the option's type (int, float, or bool written ``true``/``false``). Keyword options are
    merged with the spec's; giving the same option both ways is an error.

    ====================  ===========================================================
    problem               options (defaults)
    ====================  ===========================================================
    ``xor``               ``hidden=2`` (2 or 3), ``symmetric=false`` (hidden units start
                          as copies of the first)
    ``teacher-student``   ``k=8`` (student), ``n=k`` (teacher), ``d=n``, ``exact=true``,
                          ``N=2000``
    ``spirals``           ``N=200``, ``turns=2.5``, ``noise=0.0``, ``hidden=8``,
                          ``layers=2``
    ``gaussians``         ``N=200``, ``components=4`` (>= 4)
    ``autoencoder``       ``hidden=32``, ``bottleneck=2``
    ``digits``            ``hidden=32``
    ====================  ===========================================================

    Args:
        spec: E.g. ``"teacher-student:k=8,n=8"`` or ``"xor"``, read by the parser of
            :mod:`synaprune._spec` (shared with the methods): names are case-insensitive and
            ``_`` may stand for ``-``; keys are case-sensitive (``n`` and ``N`` differ); a key
            given twice is an error.
        **options: Options as Python values, e.g. ``k=8``.

    Returns:
        The built :class:`Problem`, with every option resolved in ``problem.options``.

    Raises:
        ValueError: Unknown problem, unknown or malformed option, duplicate option, or a
            value of the wrong type or out of range; the message names the bad part and
            the valid choices.

    Example:
        >>> get_problem("teacher-student:k=6").options
        {'k': 6, 'n': 6, 'd': 6, 'exact': True, 'N': 2000}
        >>> get_problem("xor", hidden=3).spec
        'xor:hidden=3,symmetric=False'
    """
    name, raw = _parse(spec)
    entry = _REGISTRY[name]
    clash = sorted(set(raw) & set(options))
    if clash:
        raise ValueError(
            f"Option '{clash[0]}' of problem '{name}' given both in the spec and as a keyword"
        )
    given: dict[str, Any] = {**raw, **options}
    for key in given:
        if key not in entry.options:
            raise ValueError(
                f"Unknown option '{key}' for problem '{name}'; choose from: "
                f"{', '.join(entry.options)}"
            )
    resolved = {
        key: _convert(name, key, option, given[key]) if key in given else option.default
        for key, option in entry.options.items()
    }
    return entry.build(**resolved)
