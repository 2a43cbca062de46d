"""One line per stored run, for ``synaprune results --runs``: how users find run ids.

    synaprune results --db results.db --runs --problem xor --method gd
    synaprune diagnose --db results.db --run 7
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from synaprune._spec import parse_spec
from synaprune.bench.kinds import kind_label
from synaprune.bench.methods import get_method, list_methods, method_label
from synaprune.bench.summary import check_format

__all__ = ["RUN_FIELDS", "format_runs", "method_matcher"]

# The columns of the listing, in order.
RUN_FIELDS = ("id", "problem", "method", "seed", "budget", "status", "steps", "final_loss",
              "final_grad_norm", "kind", "min_eig", "saddle_index", "cost")


def method_matcher(specs: Sequence[str]) -> Callable[[dict[str, Any]], bool]:
    """A test of stored runs against ``--method`` filters.

    A bare name (``adam``) matches every run of that method; a spec (``adam:lr=0.05``) matches
    the runs of that method whose stored options have the values typed, whatever their other
    options (defaults may have been tuned per problem when the run was made).

    Args:
        specs: The filters; an empty sequence matches every run.

    Returns:
        ``match(row) -> bool`` for rows of :meth:`synaprune.bench.ResultStore.rows`.

    Raises:
        ValueError: One line, for an unknown method, option or value.

    Example:
        >>> match = method_matcher(["adam:lr=0.05"])
        >>> match({"method_name": "adam", "method_options": {"lr": 0.05, "eps": 1e-8}})
        True
        >>> match({"method_name": "adam", "method_options": {"lr": 0.01, "eps": 1e-8}})
        False
    """
    wanted: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for spec in specs:
        name, raw = parse_spec(spec, "method")
        if name not in list_methods():
            raise ValueError(f"Unknown method '{name}'; choose from: {', '.join(list_methods())}")
        # JSON round trip: compared with the stored JSON (tuples as lists)
        method = get_method(spec)
        typed = {k: json.loads(json.dumps(getattr(method, k))) for k in raw}
        # An option added after runs were stored is left out of their options (and of new
        # runs' while at its default, Method._spec_fields): missing means its default.
        plain = get_method(name)
        unset = {k: json.loads(json.dumps(getattr(plain, k))) for k in raw}
        wanted.append((name, typed, unset))

    def match(row: dict[str, Any]) -> bool:
        if not wanted:
            return True
        stored = row["method_options"]
        return any(row["method_name"] == name
                   and all(stored.get(k, unset[k]) == v for k, v in typed.items())
                   for name, typed, unset in wanted)

    return match


def _finite(value: Any) -> Any:
    """None for NaN, inf and None; the value otherwise."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def _number(value: Any) -> str:
    return "-" if _finite(value) is None else f"{value:.6g}"


def format_runs(rows: Sequence[dict[str, Any]], fmt: str = "text") -> str:
    """Format stored runs, one per line, with the fields of :data:`RUN_FIELDS`.

    Args:
        rows: Runs as returned by :meth:`synaprune.bench.ResultStore.rows`.
        fmt: ``"text"`` (aligned, the problem's spec and the method's label last),
            ``"csv"`` (a header line; an unknown or non-finite number is an empty field) or
            ``"json"`` (a list of objects; such a number is null); csv and json give the
            method's full canonical spec. A field the row lacks or holds as None (``kind``,
            ``cost``... of a run stored before they were) is empty, null, or in text
            ``not recorded`` / ``-``.

    Returns:
        The text, ending with a newline (for ``"text"``, a note when there are no runs).

    Raises:
        ValueError: For an unknown format.

    Example:
        >>> row = {"id": 3, "problem": "xor:hidden=2", "method": "gd:lr=0.1", "seed": 0,
        ...        "budget": 50, "status": "budget", "steps": 50, "final_loss": 0.25,
        ...        "final_grad_norm": None}
        >>> print(format_runs([row], "csv"), end="")
        id,problem,method,seed,budget,status,steps,final_loss,final_grad_norm,kind,min_eig,saddle_index,cost
        3,xor:hidden=2,gd:lr=0.1,0,50,budget,50,0.25,,,,,
    """
    fmt = check_format(fmt)
    records = [{k: _finite(row.get(k)) for k in RUN_FIELDS} for row in rows]
    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(RUN_FIELDS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buffer.getvalue()
    if not records:
        return "no runs match\n"
    header = ["id", "seed", "status", "steps", "final loss", "final grad norm", "kind",
              "min eig", "cost", "problem", "method"]
    lines = [[str(r["id"]), str(r["seed"]), str(r["status"]), f"{r['steps']}/{r['budget']}",
              _number(r["final_loss"]), _number(r["final_grad_norm"]),
              kind_label(r["kind"]) + ("" if not r["saddle_index"]
                                       else f" (index {r['saddle_index']})"),
              _number(r["min_eig"]), _number(r["cost"]), str(r["problem"]),
              method_label(str(r["method"]))] for r in records]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    right = {0, 1, 3, 4, 5, 7, 8}  # numbers right-aligned

    def fmt_line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [fmt_line(header), fmt_line(["-" * w for w in widths])]
    out.extend(fmt_line(line) for line in lines)
    return "\n".join(out) + "\n"
