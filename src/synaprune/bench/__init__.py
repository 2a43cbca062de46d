"""The lab: train many seeds of problems x methods at once, store and summarise the runs.

* Methods: :func:`get_method` builds one from a spec (``"adam:lr=0.01"``; with ``problem=``
  from the options tuned on that problem, :func:`tuned_options`, ``docs/tuning.md``),
  :func:`list_methods` names them, :func:`parse_method_list` reads a command-line list;
  each is a :class:`Method`, a small dataclass with ``make_optimizer(params, generator)``.
  :func:`method_label` is the short name that tables and figures show.
* :func:`run_seeds`: S seeds of one (problem, method) vectorised over seeds
  (``stack_module_state`` + ``vmap``, one optimizer over the stacked tensors), each a
  :class:`RunResult`; :func:`run_single` is the same protocol as an ordinary single-model
  loop. Both can stop a run once its gradient is small (``until_converged``), and give each
  run its kind (:mod:`synaprune.bench.kinds`: global, spurious, saddle, moving, unstable,
  diverged) and its cost in gradient-equivalents (:mod:`synaprune.bench.cost`).
* :class:`ResultStore` (SQLite, one row per run; :class:`StoredRun` is one run read back)
  and :func:`sweep` (resumable, a :class:`SweepReport`).
* :func:`summarize` into :class:`Summary` objects, :func:`wilson_interval`,
  :func:`format_summaries`.

The method classes, the baselines' optimizers and the runner's helpers live in the
submodules (:mod:`synaprune.bench.methods`, :mod:`synaprune.bench.runner`, ...).

Example:
    >>> from synaprune.bench import get_method, run_seeds
    >>> from synaprune.problems import get_problem
    >>> results = run_seeds(get_problem("teacher-student:k=4"), get_method("gd"), range(3), 5)
    >>> [r.steps for r in results]
    [5, 5, 5]
"""

from synaprune.bench.methods import (
    Method,
    get_method,
    list_methods,
    method_label,
    parse_method_list,
    tuned_options,
)
from synaprune.bench.runner import RunResult, run_seeds, run_single
from synaprune.bench.store import ResultStore, StoredRun
from synaprune.bench.summary import Summary, format_summaries, summarize, wilson_interval
from synaprune.bench.sweep import SweepReport, sweep

__all__ = [
    "Method",
    "ResultStore",
    "RunResult",
    "StoredRun",
    "Summary",
    "SweepReport",
    "format_summaries",
    "get_method",
    "list_methods",
    "method_label",
    "parse_method_list",
    "run_seeds",
    "run_single",
    "summarize",
    "sweep",
    "tuned_options",
    "wilson_interval",
]
