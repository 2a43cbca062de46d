"""Experiments that reproduce the seeds' claims: ``synaprune experiment NAME``.

Each experiment is a module ``synaprune.experiments.<snake_name>`` with

* ``NAME`` (the command's name), ``SEED`` (source document), ``CLAIM`` (one checkable sentence),
  optionally ``VERSION`` (a string; bump it when results change meaning);
* ``cells(quick) -> list[dict]``: the units of work, JSON-able dicts of plain values that fully
  determine one result; ``quick=True`` is the minute-scale version;
* ``run_cell(cell) -> dict``: one result, deterministic given the cell, a flat dict of numbers;
* ``summarize(rows) -> dict``: ``{"held": True | False | None, "verdict": "...", ...}`` from
  ``rows = [{**cell, **result}, ...]``;
* ``plot(rows, path)``: the figure (PNG) at ``path``.

:func:`run_experiment` stores every cell's result as it finishes (``DIR/NAME.db``), computes only
missing cells on a rerun, and replaces ``DIR/NAME.csv`` and ``DIR/NAME.png`` atomically.
:data:`EXPERIMENTS` maps names to the modules that are present.

Example:
    >>> from synaprune.experiments import EXPERIMENTS, run_experiment
    >>> sorted(EXPERIMENTS)[:2]
    ['depth', 'random-neurons']
    >>> result = run_experiment("depth", "out/experiments", quick=True)  # doctest: +SKIP
    >>> result.summary["verdict"]  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ._framework import ExperimentResult, StoredExperiment, run_experiment, stored_experiment

__all__ = ["EXPERIMENTS", "ExperimentResult", "StoredExperiment", "run_experiment",
           "stored_experiment"]

# Modules written by different people; one not present yet (not merged) is skipped.
_MODULES = ("random_neurons", "depth", "width_spread", "step_size", "gradient_growth",
            "landscape", "safran_shamir")


def _load() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for snake in _MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{snake}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{snake}":
                raise  # the module exists but one of its imports is missing: a real error
            continue
        found[module.NAME] = module
    return found


EXPERIMENTS: dict[str, ModuleType] = _load()
