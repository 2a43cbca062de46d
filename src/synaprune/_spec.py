"""The one parser of spec strings ``name:key=value,...``, for problems and methods alike.

Rules, the same for both:

* Names are case-insensitive, and ``_`` may stand for ``-``: ``Teacher_Student`` is
  ``teacher-student``, ``SynaPrune-A`` is ``synaprune-a``.
* Keys are case-sensitive, as in Python: ``teacher-student`` has both ``n`` and ``N``.
* Spaces around names, keys and values are ignored.
* Options are separated by commas outside parentheses or brackets, so a pair is written
  ``betas=(0.9,0.999)``.
* A key given twice is an error naming the key (never "the last one wins").
* Values are read by the option's kind: ``int`` (digits only: ``2.0`` is not an int),
  ``float`` (finite), ``bool`` (``true``/``yes``/``1`` or ``false``/``no``/``0``, any case),
  ``str`` (non-empty), ``pair`` (two numbers, ``(a,b)``); a kind ending in ``?`` also takes
  ``none`` (any case) for None.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["normalize_name", "parse_spec", "parse_value", "split_top"]

_INT = re.compile(r"[+-]?\d+")
_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")
_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a word",
             "pair": "two numbers as (a,b)"}


def normalize_name(name: str) -> str:
    """The registry form of a problem or method name: stripped, lower case, ``_`` as ``-``."""
    return name.strip().lower().replace("_", "-")


def split_top(text: str) -> list[str]:
    """Split ``text`` on the commas that are not inside parentheses or brackets.

    Example:
        >>> split_top("lr=0.1,betas=(0.9,0.99)")
        ['lr=0.1', 'betas=(0.9,0.99)']
    """
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def parse_spec(spec: str, what: str) -> tuple[str, dict[str, str]]:
    """Split ``"name:key=value,key=value"`` into the normalised name and the raw values.

    Args:
        spec: The spec as typed.
        what: ``"problem"`` or ``"method"``, for the messages.

    Returns:
        ``(name, {key: value text})``, keys in the order given, values stripped.

    Raises:
        ValueError: One line, for a spec that is not a string, an option without ``=``, an
            empty key or value, or a key given twice.

    Example:
        >>> parse_spec(" Teacher_Student : k = 5 ", "problem")
        ('teacher-student', {'k': '5'})
    """
    if not isinstance(spec, str):
        raise ValueError(f"A {what} spec must be a string, got {type(spec).__name__}")
    name, _, rest = spec.partition(":")
    name = normalize_name(name)
    raw: dict[str, str] = {}
    if not rest.strip():
        return name, raw
    for item in split_top(rest):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise ValueError(
                f"Malformed option '{item.strip()}' in spec '{spec.strip()}'; expected key=value "
                f"pairs separated by commas, e.g. '{name}:key=value,key=value'")
        if key in raw:
            raise ValueError(f"Option '{key}' given twice in spec '{spec.strip()}'")
        raw[key] = value
    return name, raw


def parse_value(text: str, kind: str, *, key: str, owner: str) -> Any:
    """Read one option's value from its text.

    Args:
        text: The value as typed.
        kind: ``int``, ``float``, ``bool``, ``str`` or ``pair``, with a ``?`` suffix if
            ``none`` (None) is allowed.
        key: The option's name, for the message.
        owner: What the option belongs to, for the message, e.g. ``"method 'adam'"``.

    Returns:
        The value: int, float, bool, str, a tuple of two floats, or None.

    Raises:
        ValueError: One line naming the option, the bad text and what was expected.

    Example:
        >>> parse_value("(0.9,0.99)", "pair", key="betas", owner="method 'adam'")
        (0.9, 0.99)
    """
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    text = text.strip()
    bad = ValueError(f"Bad value {text!r} for option '{key}' of {owner}: expected "
                     f"{_EXPECTED[kind]}{' or none' if optional else ''}")
    if optional and text.lower() == "none":
        return None
    if kind == "int":
        if not _INT.fullmatch(text):
            raise bad
        return int(text)
    if kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise bad from None
        if not math.isfinite(value):
            raise bad
        return value
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise bad
    if kind == "pair":
        inner = text[1:-1] if text[:1] in "([" and text[-1:] in ")]" else text
        items = [s for s in re.split(r"[,;]", inner) if s.strip()]
        if len(items) != 2:
            raise bad
        try:
            pair = tuple(float(s) for s in items)
        except ValueError:
            raise bad from None
        if not all(math.isfinite(v) for v in pair):
            raise bad
        return pair
    if not text:
        raise bad
    return text
