"""The lab's results as figures and as one static HTML report.

* :func:`write_report`: ``synaprune report --db results.db --out report/``, a self-contained
  folder (index.html and PNG figures) per results database, with the experiments' claims.
* :func:`plot_success_rates`: per problem, each method's success rate with its 95% Wilson
  interval (``synaprune results --plot FILE``).
* :mod:`synaprune.report.browser`: the report checked in headless Chromium.
"""

from synaprune.report.build import write_report
from synaprune.report.success import plot_success_rates

__all__ = ["plot_success_rates", "write_report"]
