"""Method options tuned per problem by ``scripts/tune_methods.py`` (generated; do not edit).

``TUNED[problem name][method name]`` holds the options that differ from the method's own
defaults; :func:`synaprune.bench.get_method` applies them when given the problem. How they were
chosen (tuning seeds, budgets, grids, criterion) is in ``docs/tuning.md``.
"""

from typing import Any

TUNED: dict[str, dict[str, dict[str, Any]]] = {}
