"""One-call drivers: what experiments/analyze.py and compare.py run."""

from __future__ import annotations

import json
import logging
import os
from typing import Sequence

from mixlin_jax import workdir as workdir_lib
from mixlin_jax.analysis.figures import (
    plot_final_profiles, plot_heatmaps, plot_layer_profiles, plot_run_overlay,
    plot_training_curves, run_colors)
from mixlin_jax.analysis.convergence import convergence_table
from mixlin_jax.analysis.errors import AnalysisError
from mixlin_jax.analysis.recompute import analyze_workdir
from mixlin_jax.analysis.tables import (
    TABLE_NAME, default_run_name, logged_linearity_rows, metrics_present,
    metrics_rows, read_table, write_csv, write_table)
from mixlin_jax.linearity import METRICS

log = logging.getLogger(__name__)

ANALYSIS_SUBDIR = "analysis"


def run_analysis(workdir: str, out_dir: str | None = None, *,
                 profile_epochs: Sequence[int] | None = None,
                 **analyze_kwargs) -> dict:
  """:func:`analyze_workdir`, then its table and figures in ``out_dir``.

  ``out_dir`` defaults to ``<workdir>/analysis``.  Writes ``linearity.csv``,
  ``linearity.json``, ``heatmaps.png``, ``layer_profiles.png`` and
  ``training_curves.png`` (the last from metrics.jsonl).  Returns
  ``{"rows", "table", "figures", "skipped"}`` where ``skipped`` lists the
  requested (or saved) epochs that produced no rows.
  """
  out_dir = out_dir or os.path.join(workdir, ANALYSIS_SUBDIR)
  run = analyze_kwargs.pop("run", None) or default_run_name(workdir)
  rows = analyze_workdir(workdir, run=run, **analyze_kwargs)
  requested = analyze_kwargs.get("epochs")
  if requested is None:
    requested = [r["epoch"] for r in workdir_lib.read_metrics(workdir)
                 if "epoch" in r]
  done = {r["epoch"] for r in rows}
  out = {"rows": rows, "table": (), "figures": [],
         "skipped": sorted(set(int(e) for e in requested) - done)}
  if not rows:
    return out
  out["table"] = write_table(rows, out_dir)
  out["figures"].append(plot_heatmaps(rows, os.path.join(out_dir,
                                                         "heatmaps.png")))
  out["figures"].append(plot_layer_profiles(
      rows, os.path.join(out_dir, "layer_profiles.png"),
      epochs=profile_epochs))
  curves = metrics_rows(workdir, run)
  if curves:
    out["figures"].append(plot_training_curves(
        curves, os.path.join(out_dir, "training_curves.png")))
  return out


def _unique_names(workdirs: Sequence[str]) -> list[str]:
  names = [default_run_name(w) for w in workdirs]
  if len(set(names)) == len(names):
    return names
  # Same base name in different folders: prefix the parent folder.
  return [os.path.join(os.path.basename(os.path.dirname(
      os.path.normpath(os.path.abspath(w)))), n) for w, n in
          zip(workdirs, names)]


def _linearity_setup(workdir: str) -> dict:
  flat = workdir_lib.read_config(workdir) or {}
  return {k: flat.get(k) for k in ("linearity.split", "linearity.num_tuples",
                                   "linearity.num_points", "linearity.seed",
                                   "linearity.grid", "data.dataset",
                                   "data.num_test")}


def compare_runs(workdirs: Sequence[str], out_dir: str, *,
                 names: Sequence[str] | None = None,
                 target_accuracy: float | None = None,
                 target_loss: float | None = None,
                 fraction: float = 0.9,
                 accuracy_key: str = "test.student_accuracy",
                 loss_key: str | None = None,
                 metrics: Sequence[str] = METRICS,
                 analysis_subdir: str = ANALYSIS_SUBDIR) -> dict:
  """Overlays several runs from their logs (and analysis tables, if any).

  Reads each workdir's ``metrics.jsonl`` (the linearity logged during
  training: no recompute) and, where present,
  ``<workdir>/<analysis_subdir>/linearity.json``.  Writes into ``out_dir``:

  * ``logged_<metric>_by_layer.png`` -- one panel per layer, x = epoch,
    one line per run; ``logged_final_profiles.png`` -- per-layer profile at
    each run's final epoch, one line per run;
  * the same with prefix ``analysis_`` from the analysis tables (runs that
    have one);
  * ``training_curves.png``; ``linearity_logged.csv/.json`` (all runs);
  * ``convergence.csv`` (see :func:`convergence_table`).

  Returns ``{"names", "figures", "tables", "convergence",
  "convergence_rows"}``.
  """
  workdirs = list(workdirs)
  if not workdirs:
    raise AnalysisError("no workdirs to compare")
  unknown = [m for m in metrics if m not in METRICS]
  if unknown or not metrics:
    raise AnalysisError(f"metrics must be a non-empty subset of {METRICS}, "
                        f"got {list(metrics)}")
  names = list(names) if names else _unique_names(workdirs)
  if len(names) != len(workdirs):
    raise AnalysisError(f"{len(names)} names for {len(workdirs)} workdirs")
  if len(set(names)) != len(names):
    raise AnalysisError(f"run names must be distinct, got {names}")
  for w in workdirs:
    if not os.path.exists(os.path.join(w, workdir_lib.METRICS_FILE)):
      raise AnalysisError(f"{w} has no {workdir_lib.METRICS_FILE}.")
    torn = workdir_lib.torn_metrics_lines(w)
    if torn:
      log.warning(
          "%s: line(s) %s of %s are not JSON (a torn record, what a kill "
          "during a write leaves) and are left out, with their epochs; "
          "resuming the run repairs the log.", w,
          ", ".join(map(str, torn)), workdir_lib.METRICS_FILE)
  setups = {n: _linearity_setup(w) for n, w in zip(names, workdirs)}
  if len({json.dumps(s, sort_keys=True) for s in setups.values()}) > 1:
    log.warning("the runs measured linearity on different data or tuples; "
                "their curves are less directly comparable: %s", setups)

  os.makedirs(out_dir, exist_ok=True)
  figures, tables = [], []
  colors = run_colors(names)  # one colour per run in every figure
  curves = [r for n, w in zip(names, workdirs) for r in metrics_rows(w, n)]
  if curves:
    figures.append(plot_training_curves(
        curves, os.path.join(out_dir, "training_curves.png"),
        title="training curves: " + " vs ".join(names), colors=colors))

  sources = {"logged": [r for n, w in zip(names, workdirs)
                        for r in logged_linearity_rows(w, n)]}
  analysed = []
  for n, w in zip(names, workdirs):
    path = os.path.join(w, analysis_subdir, TABLE_NAME + ".json")
    if os.path.exists(path):
      for r in read_table(path):
        r["run"] = n
        analysed.append(r)
  if analysed:
    sources["analysis"] = analysed
    with_analysis = sorted({r["run"] for r in analysed}, key=names.index)
    if len(with_analysis) < len(names):
      log.warning(
          "only %s have an %s/ table; the analysis_* figures show those runs "
          "alone (run experiments/analyze.py on the others to include them).",
          ", ".join(with_analysis), analysis_subdir)
  for prefix, rows in sources.items():
    if not rows:
      continue
    tables.extend(write_table(rows, out_dir, name=f"linearity_{prefix}"))
    present = metrics_present(rows, metrics)
    run_order = [n for n in names if any(r["run"] == n for r in rows)]
    for metric in present:
      figures.append(plot_run_overlay(
          rows, os.path.join(out_dir, f"{prefix}_{metric}_by_layer.png"),
          metric=metric, runs=run_order, colors=colors))
    figures.append(plot_final_profiles(
        rows, os.path.join(out_dir, f"{prefix}_final_profiles.png"),
        runs=run_order, metrics=present, colors=colors))

  conv = convergence_table(curves, target_accuracy=target_accuracy,
                           target_loss=target_loss, fraction=fraction,
                           accuracy_key=accuracy_key, loss_key=loss_key)
  conv_path = write_csv(conv, os.path.join(out_dir, "convergence.csv"))
  return {"names": names, "figures": figures, "tables": tables,
          "convergence": conv_path, "convergence_rows": conv}
