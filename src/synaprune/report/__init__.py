"""Figures of the lab's results.

* :func:`plot_success_rates`: per problem, each method's success rate with its 95% Wilson
  interval (``synaprune results --plot FILE``).
"""

from synaprune.report.success import plot_success_rates

__all__ = ["plot_success_rates"]
