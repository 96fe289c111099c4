"""Tidy tables of runs: rows from logs and evaluator results, CSV/JSON I/O.

One row per (run, epoch, layer, metric, weight) for linearity
(:func:`linearity_rows`), one per (run, epoch) for the other metrics
(:func:`metrics_rows`); both read ``metrics.jsonl`` without recomputing
anything.  Weight averaging (:func:`average_over_weights`): per (run, epoch,
layer, metric), the mean over the mixing weights of the per-weight means
(every weight uses the same tuples); its ``stderr`` is the mean of the
per-weight standard errors, an upper bound on the standard error of that
average (Minkowski's inequality; the per-weight estimates are positively
correlated, so the bound is not loose by much).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mixlin_jax import workdir as workdir_lib
from mixlin_jax.linearity import METRICS

METRIC_LABELS = {
    "interp_error": "interpolation error",
    "relative_error": "relative error",
    "tangent_residual": "tangent residual",
    "raw_gap": "raw gap",
}
TABLE_NAME = "linearity"
# Accuracy and loss columns of metrics_rows() used by the figures and the
# convergence table.
ACCURACY_KEYS = ("test.student_accuracy", "test.teacher_accuracy")
LOSS_KEYS = ("train.loss", "train.supervised", "labelled.student_loss",
             "test.student_loss", "test.teacher_loss")


def epoch_ranges(values: Iterable[int]) -> str:
  """[1, 2, 3, 7] -> '1-3, 7'."""
  values = sorted(values)
  out, start = [], None
  for i, v in enumerate(values):
    if start is None:
      start = v
    if i + 1 == len(values) or values[i + 1] != v + 1:
      out.append(str(start) if start == v else f"{start}-{v}")
      start = None
  return ", ".join(out)


def default_run_name(workdir: str) -> str:
  return os.path.basename(os.path.normpath(os.path.abspath(workdir)))


def _fmt_weights(w: Sequence[float] | None) -> str:
  return "" if w is None else " ".join(f"{x:.4g}" for x in w)


def linearity_rows(result: Mapping[str, Any], *, run: str, epoch: int,
                   source: str = "") -> list[dict]:
  """Tidy rows from a :class:`LinearityEvaluator` result (or a logged one).

  One row per (layer, metric, weight index) with columns ``run, epoch,
  layer, metric, weight_index, weights, t, value, stderr, num_points,
  num_tuples, source``.  ``weights`` is the weight vector as a
  space-separated string ("0.9 0.1"); ``t`` the path parameter: ``w_2`` for
  ``K = 2``, the ``tangent_t`` entry for the tangent residual, None for the
  other metrics when ``K > 2`` (Dirichlet weights have no single ``t``).
  For ``K > 2`` the tangent residual's index runs over ``tangent_t`` and its
  ``weights`` is empty.
  """
  weights = result["weights"]
  k = len(weights[0])
  tangent_t = result.get("tangent_t")
  rows = []
  for metric in METRICS:
    if metric not in result:
      continue
    for layer in result["layers"]:
      stats = result[metric][layer]
      for i, (mean, stderr) in enumerate(zip(stats["mean"], stats["stderr"])):
        if metric == "tangent_residual":
          w = weights[i] if k == 2 else None
          t = float(tangent_t[i]) if tangent_t is not None else (
              float(weights[i][1]) if k == 2 else None)
        else:
          w = weights[i]
          t = float(w[1]) if k == 2 else None
        rows.append({
            "run": run, "epoch": int(epoch), "layer": layer,
            "metric": metric, "weight_index": i, "weights": _fmt_weights(w),
            # float32 grid values: 0.1 is stored as 0.10000000149...
            "t": None if t is None else round(t, 6), "value": float(mean),
            "stderr": None if stderr is None else float(stderr),
            "num_points": k, "num_tuples": int(result["num_tuples"]),
            "source": source,
        })
  return rows


def _records_by_epoch(workdir: str) -> list[dict]:
  """metrics.jsonl records, one per epoch (the last one wins), by epoch."""
  by_epoch = {}
  for r in workdir_lib.read_metrics(workdir):
    if "epoch" in r:
      by_epoch[int(r["epoch"])] = r
  return [by_epoch[e] for e in sorted(by_epoch)]


def logged_linearity_rows(workdir: str, run: str | None = None) -> list[dict]:
  """Tidy rows of the linearity logged during training (no recompute)."""
  run = run or default_run_name(workdir)
  rows = []
  for r in _records_by_epoch(workdir):
    if "linearity" in r:
      rows.extend(linearity_rows(r["linearity"], run=run, epoch=r["epoch"],
                                 source="logged"))
  return rows


def metrics_rows(workdir: str, run: str | None = None) -> list[dict]:
  """One row per logged epoch: accuracy, losses, timings (no linearity).

  Columns: ``run, epoch, step, learning_rate, images_per_second`` and the
  nested groups flattened with a dot: ``train.loss``, ``train.supervised``,
  ``train.consistency``, ``train.consistency_weight``,
  ``train.train_accuracy``, ``test.student_accuracy``, ``test.student_loss``,
  ``test.teacher_accuracy``, ``test.teacher_loss``,
  ``labelled.student_accuracy``, ``labelled.student_loss`` (clean: no
  augmentation or mixing, inference mode; runs since it was added),
  ``seconds.train``,
  ``seconds.eval``, ``seconds.linearity``.
  """
  run = run or default_run_name(workdir)
  rows = []
  for r in _records_by_epoch(workdir):
    row = {"run": run, "epoch": int(r["epoch"])}
    for key in ("step", "learning_rate", "images_per_second"):
      if key in r:
        row[key] = r[key]
    for group in ("train", "test", "labelled", "seconds"):
      for key, value in (r.get(group) or {}).items():
        row[f"{group}.{key}"] = value
    rows.append(row)
  return rows


def is_finite_number(x) -> bool:
  return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def average_over_weights(rows: Iterable[Mapping]) -> list[dict]:
  """Rows -> one row per (run, epoch, layer, metric): the mean over weights.

  ``value`` is the mean of the per-weight values; ``stderr`` the mean of the
  per-weight standard errors (an upper bound on the average's, see the
  module docstring); ``num_weights`` how many were averaged.
  """
  groups: dict[tuple, list] = {}
  for r in rows:
    groups.setdefault((r["run"], r["epoch"], r["layer"], r["metric"]),
                      []).append(r)
  out = []
  for (run, epoch, layer, metric), group in groups.items():
    values = [g["value"] for g in group if is_finite_number(g["value"])]
    errs = [g["stderr"] for g in group if is_finite_number(g.get("stderr"))]
    out.append({"run": run, "epoch": epoch, "layer": layer, "metric": metric,
                "value": float(np.mean(values)) if values else math.nan,
                "stderr": float(np.mean(errs)) if errs else math.nan,
                "num_weights": len(group)})
  return out


def layer_order(layers: Iterable[str]) -> list[str]:
  """Distinct layer names in network order (the ``NN_`` prefix sorts them)."""
  return sorted(set(layers))


def display_layer(name: str) -> str:
  """``'02_conv3'`` -> ``'conv3'``."""
  return re.sub(r"^\d+_", "", name)


def metrics_present(rows, metrics) -> list[str]:
  present = {r["metric"] for r in rows}
  return [m for m in metrics if m in present]


def _clean(value):
  """NaN/inf -> None for strict JSON; numpy scalars -> python."""
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_csv(rows: Sequence[Mapping], path: str) -> str:
  """Writes ``rows`` as CSV (columns in first-seen order); returns ``path``."""
  columns: list[str] = []
  for r in rows:
    for k in r:
      if k not in columns:
        columns.append(k)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, restval="")
    writer.writeheader()
    for r in rows:
      writer.writerow({k: "" if v is None else v for k, v in r.items()})
  return path


def write_table(rows: Sequence[Mapping], out_dir: str,
                name: str = TABLE_NAME) -> tuple[str, str]:
  """Writes ``<out_dir>/<name>.csv`` and ``<name>.json``; returns both paths.

  The JSON is a list of row objects, strict JSON (NaN written as null).
  """
  os.makedirs(out_dir, exist_ok=True)
  csv_path = write_csv(rows, os.path.join(out_dir, f"{name}.csv"))
  json_path = os.path.join(out_dir, f"{name}.json")
  with open(json_path, "w") as f:
    json.dump([{k: _clean(v) for k, v in r.items()} for r in rows], f,
              indent=1, allow_nan=False)
  return csv_path, json_path


def read_table(path: str) -> list[dict]:
  """Rows of a table written by :func:`write_table` (the .json file)."""
  with open(path) as f:
    rows = json.load(f)
  for r in rows:  # null -> NaN so arithmetic works
    for key in ("value", "stderr"):
      if r.get(key) is None:
        r[key] = math.nan
  return rows


def format_table(rows: Sequence[Mapping],
                 columns: Sequence[str] | None = None) -> str:
  """Plain-text table (floats to 4 significant digits, None as '-')."""
  if not rows:
    return "(no rows)"
  columns = list(columns or rows[0].keys())

  def fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
      return "-"
    if isinstance(v, float):
      return f"{v:.4g}"
    return str(v)

  cells = [[fmt(r.get(c)) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells))
            for i, c in enumerate(columns)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
  lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths))
            for row in cells]
  return "\n".join(lines)
