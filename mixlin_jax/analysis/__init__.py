"""Post-hoc analysis of finished (or running) workdirs and of whole studies.

One job per module, each usable on its own from a notebook:

* :mod:`~mixlin_jax.analysis.recompute` -- reload saved epochs read-only and
  recompute the linearity metrics (:func:`analyze_workdir`).
* :mod:`~mixlin_jax.analysis.tables` -- tidy rows from logs and results,
  CSV/JSON I/O.
* :mod:`~mixlin_jax.analysis.figures` -- PNG figures of runs.
* :mod:`~mixlin_jax.analysis.convergence` -- epochs to a target.
* :mod:`~mixlin_jax.analysis.reports` -- the one-call drivers behind
  ``experiments/analyze.py`` and ``experiments/compare.py``.
* :mod:`~mixlin_jax.analysis.stats` -- statistics across seeds (scipy).
* :mod:`~mixlin_jax.analysis.claims` -- the paper's claims as tests fixed in
  advance, and their verdicts.
* :mod:`~mixlin_jax.analysis.study` -- a study's aggregate: tables, figures,
  ``claims.md``.

The names below are re-exported for convenience (``from mixlin_jax import
analysis; analysis.compare_runs(...)``).
"""

from mixlin_jax.analysis.convergence import convergence_table
from mixlin_jax.analysis.errors import AnalysisError
from mixlin_jax.analysis.figures import (
    plot_final_profiles,
    plot_heatmaps,
    plot_layer_profiles,
    plot_run_overlay,
    plot_training_curves,
)
from mixlin_jax.analysis.recompute import (
    analyze_workdir,
    clear_cache,
    config_from_workdir,
    state_skeleton,
)
from mixlin_jax.analysis.reports import compare_runs, run_analysis
from mixlin_jax.analysis.tables import (
    METRIC_LABELS,
    average_over_weights,
    display_layer,
    format_table,
    layer_order,
    linearity_rows,
    logged_linearity_rows,
    metrics_rows,
    read_table,
    write_csv,
    write_table,
)
from mixlin_jax.linearity import METRICS

__all__ = [
    "AnalysisError",
    "METRICS",
    "METRIC_LABELS",
    "analyze_workdir",
    "average_over_weights",
    "clear_cache",
    "compare_runs",
    "config_from_workdir",
    "convergence_table",
    "display_layer",
    "format_table",
    "layer_order",
    "linearity_rows",
    "logged_linearity_rows",
    "metrics_rows",
    "plot_final_profiles",
    "plot_heatmaps",
    "plot_layer_profiles",
    "plot_run_overlay",
    "plot_training_curves",
    "read_table",
    "run_analysis",
    "state_skeleton",
    "write_csv",
    "write_table",
]
