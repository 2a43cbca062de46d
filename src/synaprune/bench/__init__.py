"""The lab: train many seeds of problems x methods at once, store and summarise the runs.

* :mod:`~synaprune.bench.methods`: the method registry (``gd``, ``sgd``, ``momentum``,
  ``adam``, ``perturbed-gd``, ``gradient-noise``, ``sam``, ``saddle-free-newton``,
  ``synaprune-a``, ``synaprune-b``, ``synaprune-ab``, ``synaprune-c``, ``synaprune-ac``,
  ``synaprune-bc``, ``synaprune``), each a small dataclass with
  ``make_optimizer(params, generator)``; :func:`get_method` with ``problem=`` starts from the
  options tuned on that problem (:func:`tuned_options`, ``docs/tuning.md``).
* :func:`run_seeds`: S seeds of one (problem, method) vectorised over seeds
  (``stack_module_state`` + ``vmap``, one optimizer over the stacked tensors);
  :func:`run_single` is the same protocol as an ordinary single-model loop.
* :class:`ResultStore` (SQLite, WAL, one row per run) and :func:`sweep` (resumable).
* :func:`summarize`, :func:`wilson_interval`, :func:`format_summaries`.
* Command line: :func:`add_bench_parser`, :func:`add_results_parser`.

Example:
    >>> from synaprune.bench import get_method, run_seeds
    >>> from synaprune.problems import get_problem
    >>> results = run_seeds(get_problem("teacher-student:k=4"), get_method("gd"), range(3), 5)
    >>> [r.steps for r in results]
    [5, 5, 5]
"""

from synaprune.bench.cli import add_bench_parser, add_results_parser
from synaprune.bench.methods import (
    PLANNED_METHODS,
    Adam,
    GradientDescent,
    GradientNoiseMethod,
    Method,
    MinibatchSGD,
    Momentum,
    PerturbedGDMethod,
    SaddleFreeNewtonMethod,
    SAMMethod,
    SynaPruneA,
    SynaPruneAB,
    SynaPruneABC,
    SynaPruneAC,
    SynaPruneB,
    SynaPruneBC,
    SynaPruneC,
    get_method,
    list_methods,
    parse_method_list,
    tuned_options,
)
from synaprune.bench.runner import (
    MinibatchSampler,
    RunResult,
    check_compatible,
    noise_generator,
    run_seeds,
    run_single,
)
from synaprune.bench.store import ResultStore
from synaprune.bench.summary import Summary, format_summaries, summarize, wilson_interval
from synaprune.bench.sweep import SweepReport, sweep

__all__ = [
    "PLANNED_METHODS",
    "Adam",
    "GradientDescent",
    "GradientNoiseMethod",
    "Method",
    "MinibatchSGD",
    "MinibatchSampler",
    "Momentum",
    "PerturbedGDMethod",
    "ResultStore",
    "RunResult",
    "SAMMethod",
    "SaddleFreeNewtonMethod",
    "Summary",
    "SweepReport",
    "SynaPruneA",
    "SynaPruneAB",
    "SynaPruneABC",
    "SynaPruneAC",
    "SynaPruneB",
    "SynaPruneBC",
    "SynaPruneC",
    "add_bench_parser",
    "add_results_parser",
    "check_compatible",
    "format_summaries",
    "get_method",
    "list_methods",
    "noise_generator",
    "parse_method_list",
    "run_seeds",
    "run_single",
    "summarize",
    "sweep",
    "tuned_options",
    "wilson_interval",
]
