"""Reports: finished cells read back, grouped into configurations, compared with their baselines,
and written as ``results.csv``, ``report.md``, plots and a self-contained ``report.html``.

- ``cells``: ``read_cells`` (the one reader: MLflow or ``results.jsonl``), ``Cell``,
  ``Configuration``, ``configurations``, ``baseline`` (also used by ``check`` and the grid's table).
- ``statistics``: ``summarise`` (one row per configuration), ``bootstrap_delta``.
- ``figures``: the plots; ``predictions``: ``prediction_panels`` (the label maps each cell's
  evaluation kept, or its logged weights');
  ``diagnostics``: ``trunk_notes`` (configurations sharing a trunk), ``diagnostic_figures`` (the
  heads' own diagnostics), ``collapsed_classes`` (ProtoSeg's collapse flag).
- ``write``: ``write_report``.
"""

from harness.report.cells import (
    Cell,
    Configuration,
    baseline,
    baseline_name,
    configurations,
    mean,
    paired_difference,
    paired_seeds,
    read_cells,
)
from harness.report.diagnostics import COLLAPSE_SHARE, collapsed_classes, diagnostic_figures, trunk_notes
from harness.report.predictions import prediction_panels
from harness.report.statistics import COLUMNS, RESAMPLES, bootstrap_delta, summarise
from harness.report.write import write_report

__all__ = [
    "COLLAPSE_SHARE",
    "COLUMNS",
    "RESAMPLES",
    "Cell",
    "Configuration",
    "baseline",
    "baseline_name",
    "bootstrap_delta",
    "collapsed_classes",
    "configurations",
    "diagnostic_figures",
    "mean",
    "paired_difference",
    "paired_seeds",
    "prediction_panels",
    "read_cells",
    "summarise",
    "trunk_notes",
    "write_report",
]
