"""Figures of runs (PNG), drawn with matplotlib's Agg canvas directly.

The global pyplot backend of a notebook is left alone.  Single-run figures:
:func:`plot_heatmaps`, :func:`plot_layer_profiles`; several runs:
:func:`plot_training_curves`, :func:`plot_run_overlay`,
:func:`plot_final_profiles`.  Layers are always in network order; lower is
more linear.  A run keeps one colour in every figure of one call
(:func:`run_colors`), and a regime one colour in every figure of the
project (:data:`REGIME_COLORS`).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from mixlin_jax.analysis.errors import AnalysisError
from mixlin_jax.analysis.tables import (
    LOSS_KEYS, METRIC_LABELS, average_over_weights, display_layer,
    epoch_ranges, is_finite_number, layer_order, metrics_present)
from mixlin_jax.linearity import METRICS

log = logging.getLogger(__name__)

# One colour per regime in every figure of the project: ERM grey, supervised
# mixup blues, unsupervised (consistency) mixup reds/oranges, darker for
# more points.
REGIME_COLORS = {
    "erm": "#555555",
    "supmix2": "#1f77b4", "supmix3": "#17a2b8", "supmix4": "#0b3d91",
    "mix2": "#d62728", "mix3": "#ff7f0e", "mix4": "#8c1c13",
}


def regime_color(regime: str):
  """The project-wide colour of a regime name (a fixed fallback otherwise)."""
  if regime in REGIME_COLORS:
    return REGIME_COLORS[regime]
  import zlib  # pylint: disable=import-outside-toplevel
  import matplotlib  # pylint: disable=import-outside-toplevel
  return matplotlib.colormaps["tab20"](zlib.crc32(regime.encode()) % 20)

_LOG_SPAN = 100.0  # a log axis when the positive values span >= 2 decades


def run_colors(runs: Sequence[str]) -> dict:
  """One colour per run for every figure of a comparison: a run named after
  a regime gets the regime's colour, the others tab10 colours in order."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  palette = matplotlib.colormaps["tab10"]
  out, i = {}, 0
  for run in runs:
    if run in REGIME_COLORS:
      out[run] = REGIME_COLORS[run]
    else:
      out[run] = palette(i % 10)
      i += 1
  return out


def new_figure(nrows: int, ncols: int, width: float, height: float):
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(width, height), layout="constrained")
  axes = fig.subplots(nrows, ncols, squeeze=False)
  return fig, axes


def save_figure(fig, path: str, dpi: int = 100) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi, format="png")
  return path


def epoch_axis(ax) -> None:
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("epoch")


def wants_log(values: Iterable[float]) -> bool:
  v = np.asarray([x for x in values if is_finite_number(x)], np.float64)
  pos = v[v > 0]
  return bool(pos.size) and bool(np.all(v > 0)) and (
      pos.max() / pos.min() >= _LOG_SPAN)


def _single_run(rows: Sequence[Mapping], run: str | None) -> tuple[str, list]:
  runs = sorted({r["run"] for r in rows})
  if run is None:
    if len(runs) != 1:
      raise AnalysisError(f"rows hold runs {runs}; pass run=...")
    run = runs[0]
  return run, [r for r in rows if r["run"] == run]


def _colors(n: int, cmap: str = "tab10"):
  import matplotlib  # pylint: disable=import-outside-toplevel
  if cmap == "tab10" and n <= 10:
    return [matplotlib.colormaps["tab10"](i) for i in range(n)]
  cm = matplotlib.colormaps[cmap if cmap != "tab10" else "viridis"]
  return [cm(x) for x in np.linspace(0.0, 0.9, max(n, 1))]


def _table(avg: Sequence[Mapping], metric: str) -> dict:
  return {(r["run"], r["epoch"], r["layer"]): r for r in avg
          if r["metric"] == metric}


def plot_heatmaps(rows: Sequence[Mapping], path: str, *,
                  run: str | None = None,
                  metrics: Sequence[str] = METRICS) -> str:
  """Layer x epoch heatmap per metric (value averaged over the weights).

  One panel per metric; rows are layers in network order (input at the
  top), columns epochs; a log colour scale where the values span two
  decades or more.  Cells without a value (a skipped epoch) are grey.
  """
  from matplotlib.colors import LogNorm, Normalize  # pylint: disable=import-outside-toplevel
  import matplotlib  # pylint: disable=import-outside-toplevel
  run, rows = _single_run(rows, run)
  avg = average_over_weights(rows)
  metrics = metrics_present(avg, metrics)
  layers = layer_order(r["layer"] for r in avg)
  epochs = sorted({r["epoch"] for r in avg})
  fig, axes = new_figure(1, len(metrics),
                      max(4.2, 0.32 * len(epochs) + 2.6) * len(metrics),
                      max(3.0, 0.34 * len(layers) + 1.6))
  for ax, metric in zip(axes[0], metrics):
    table = _table(avg, metric)
    grid = np.full((len(layers), len(epochs)), np.nan)
    for i, layer in enumerate(layers):
      for j, epoch in enumerate(epochs):
        r = table.get((run, epoch, layer))
        if r is not None:
          grid[i, j] = r["value"]
    finite = grid[np.isfinite(grid)]
    log_scale = wants_log(finite.tolist())
    if log_scale:
      norm = LogNorm(vmin=finite[finite > 0].min(), vmax=finite.max())
    else:
      norm = Normalize(vmin=finite.min() if finite.size else 0,
                       vmax=finite.max() if finite.size else 1)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.8")
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap,
                   norm=norm, interpolation="nearest")
    if len(epochs) <= 16 and len(layers) <= 12:  # small: print the values
      for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
          shade = norm(max(v, norm.vmin) if log_scale else v)
          ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=6.5,
                  color="black" if shade > 0.55 else "white")
    ax.set_yticks(range(len(layers)), [display_layer(l) for l in layers])
    step = max(1, math.ceil(len(epochs) / 12))
    ticks = list(range(0, len(epochs), step))
    ax.set_xticks(ticks, [str(epochs[j]) for j in ticks])
    ax.set_xlabel("epoch")
    ax.set_ylabel("layer (input at top)")
    ax.set_title(METRIC_LABELS.get(metric, metric))
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label("mean over mixing weights" +
                   (" (log scale)" if log_scale else ""))
  fig.suptitle(f"{run}: layer-wise linearity over training (lower = more "
               "linear)")
  return save_figure(fig, path)


def _pick_epochs(epochs: Sequence[int], count: int = 5) -> list[int]:
  epochs = sorted(set(epochs))
  if len(epochs) <= count:
    return epochs
  idx = np.unique(np.round(np.linspace(0, len(epochs) - 1, count)).astype(int))
  return [epochs[i] for i in idx]


def profile_axis(ax, layers, log_scale):
  ax.set_xticks(range(len(layers)), [display_layer(l) for l in layers],
                rotation=30 if len(layers) > 6 else 0, ha="right"
                if len(layers) > 6 else "center")
  ax.set_xlabel("layer (network order)")
  if log_scale:
    ax.set_yscale("log")
  ax.grid(True, alpha=0.3)


def band(ax, x, y, e, color):
  y, e = np.asarray(y, float), np.asarray(e, float)
  ok = np.isfinite(y) & np.isfinite(e)
  if ok.any():
    lo = np.where(ok, y - e, np.nan)
    hi = np.where(ok, y + e, np.nan)
    lo = np.where(lo > 0, lo, np.where(ok, y * 0.5, np.nan))  # keep log axes sane
    ax.fill_between(np.asarray(x)[ok], lo[ok], hi[ok], color=color,
                    alpha=0.18, linewidth=0)


def plot_layer_profiles(rows: Sequence[Mapping], path: str, *,
                        epochs: Sequence[int] | None = None,
                        run: str | None = None,
                        metrics: Sequence[str] = METRICS) -> str:
  """Per-layer profile at chosen epochs: x = layer, one line per epoch.

  ``epochs`` defaults to up to five evenly spaced analysed epochs (first and
  last included).  Bands: mean per-weight standard error.
  """
  run, rows = _single_run(rows, run)
  avg = average_over_weights(rows)
  metrics = metrics_present(avg, metrics)
  layers = layer_order(r["layer"] for r in avg)
  have = sorted({r["epoch"] for r in avg})
  chosen = [e for e in (epochs or _pick_epochs(have)) if e in have]
  missing = sorted(set(epochs or []) - set(have))
  if missing:
    log.warning("plot_layer_profiles: epochs %s are not in the rows.",
                epoch_ranges(missing))
  colors = _colors(len(chosen), "viridis")
  fig, axes = new_figure(1, len(metrics), 4.6 * len(metrics), 3.8)
  for ax, metric in zip(axes[0], metrics):
    table = _table(avg, metric)
    values = []
    for color, epoch in zip(colors, chosen):
      y = [table[(run, epoch, l)]["value"] if (run, epoch, l) in table
           else np.nan for l in layers]
      e = [table[(run, epoch, l)]["stderr"] if (run, epoch, l) in table
           else np.nan for l in layers]
      values += y
      ax.plot(range(len(layers)), y, "o-", color=color, label=f"epoch {epoch}")
      band(ax, range(len(layers)), y, e, color)
    profile_axis(ax, layers, wants_log(values))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric) + " (mean over weights)")
    ax.set_title(METRIC_LABELS.get(metric, metric))
    ax.legend(title=run, fontsize="small")
  fig.suptitle(f"{run}: linearity by layer at selected epochs (lower = more "
               "linear)")
  return save_figure(fig, path)


def plot_training_curves(rows: Sequence[Mapping], path: str, *,
                         title: str | None = None,
                         colors: Mapping[str, object] | None = None) -> str:
  """Test accuracy (student solid, EMA teacher dashed) and losses by epoch.

  ``colors`` maps run names to colours (default :func:`run_colors`); pass
  the same mapping to every figure of a comparison.

  ``rows`` from :func:`metrics_rows`, one or several runs (colour = run).
  Loss panel: train loss (solid; includes the weighted consistency term
  for unsupervised mixup), supervised train loss (dotted, when it differs)
  and student test loss (dashed).
  """
  from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel
  runs = list(dict.fromkeys(r["run"] for r in rows))
  by_run = dict(run_colors(runs), **(colors or {}))
  colors = [by_run[r] for r in runs]
  fig, axes = new_figure(1, 2, 10.5, 4.3)
  ax_acc, ax_loss = axes[0]
  styles = {"test.student_accuracy": "-", "test.teacher_accuracy": "--",
            "train.loss": "-", "train.supervised": ":",
            "labelled.student_loss": "-.",
            "test.student_loss": "--"}
  names = {"test.student_accuracy": "student (test)",
           "test.teacher_accuracy": "EMA teacher (test)",
           "train.loss": "train loss (total)",
           "train.supervised": "train loss (supervised term)",
           "labelled.student_loss": "clean labelled loss",
           "test.student_loss": "test loss (student)"}
  used = set()
  for color, run in zip(colors, runs):
    rr = sorted((r for r in rows if r["run"] == run), key=lambda r: r["epoch"])
    x = [r["epoch"] for r in rr]
    for key in ("test.student_accuracy", "test.teacher_accuracy"):
      y = [r.get(key, np.nan) for r in rr]
      if any(is_finite_number(v) for v in y):
        ax_acc.plot(x, y, styles[key], color=color, marker=".")
        used.add(key)
    for key in ("train.loss", "train.supervised", "labelled.student_loss",
                "test.student_loss"):
      y = [r.get(key, np.nan) for r in rr]
      if key == "train.supervised" and all(
          is_finite_number(a) and is_finite_number(b) and abs(a - b) < 1e-9
          for a, b in zip(y, (r.get("train.loss") for r in rr))):
        continue  # identical to the total (no consistency term)
      if any(is_finite_number(v) for v in y):
        ax_loss.plot(x, y, styles[key], color=color)
        used.add(key)
  run_handles = [Line2D([], [], color=c, lw=2, label=r)
                 for c, r in zip(colors, runs)]
  for ax, keys in ((ax_acc, ("test.student_accuracy",
                             "test.teacher_accuracy")),
                   (ax_loss, ("train.loss", "train.supervised",
                              "labelled.student_loss",
                              "test.student_loss"))):
    style_handles = [Line2D([], [], color="0.3", ls=styles[k],
                            label=names[k]) for k in keys if k in used]
    ax.legend(handles=style_handles, fontsize="small")
    epoch_axis(ax)
    ax.grid(True, alpha=0.3)
  fig.legend(handles=run_handles, loc="outside lower center",
             ncols=min(len(runs), 6), title="run" if len(runs) > 1 else None)
  ax_acc.set_ylabel("test accuracy")
  ax_acc.set_title("accuracy")
  ax_loss.set_ylabel("cross-entropy")
  ax_loss.set_title("loss")
  loss_values = [r.get(k) for r in rows for k in LOSS_KEYS]
  if wants_log(v for v in loss_values if v is not None):
    ax_loss.set_yscale("log")
  fig.suptitle(title or ("training curves: " + ", ".join(runs)))
  return save_figure(fig, path)


def plot_run_overlay(rows: Sequence[Mapping], path: str, *,
                     metric: str = "interp_error",
                     runs: Sequence[str] | None = None,
                     ncols: int | None = None,
                     colors: Mapping[str, object] | None = None) -> str:
  """Small multiples: one panel per layer, x = epoch, one line per run."""
  avg = [r for r in average_over_weights(rows) if r["metric"] == metric]
  if not avg:
    raise AnalysisError(f"no rows for metric {metric!r}")
  runs = list(runs or dict.fromkeys(r["run"] for r in avg))
  layers = layer_order(r["layer"] for r in avg)
  ncols = ncols or min(len(layers), 3 if len(layers) <= 6 else 4)
  nrows = math.ceil(len(layers) / ncols)
  fig, axes = new_figure(nrows, ncols, 3.5 * ncols, 2.7 * nrows + 0.6)
  by_run = dict(run_colors(runs), **(colors or {}))
  colors = [by_run[r] for r in runs]
  table = _table(avg, metric)
  handles = []
  for idx, layer in enumerate(layers):
    ax = axes[idx // ncols][idx % ncols]
    values = []
    for color, run in zip(colors, runs):
      pts = sorted((k[1], v) for k, v in table.items()
                   if k[0] == run and k[2] == layer)
      if not pts:
        continue
      x = [p[0] for p in pts]
      y = [p[1]["value"] for p in pts]
      values += y
      line, = ax.plot(x, y, "-", color=color, marker="." if len(x) < 30
                      else None, label=run)
      band(ax, x, y, [p[1]["stderr"] for p in pts], color)
      if run not in [h.get_label() for h in handles]:
        handles.append(line)
    if wants_log(values):
      ax.set_yscale("log")
    ax.set_title(display_layer(layer))
    epoch_axis(ax)
    ax.grid(True, alpha=0.3)
    if idx % ncols == 0:
      ax.set_ylabel(METRIC_LABELS.get(metric, metric))
  for idx in range(len(layers), nrows * ncols):
    axes[idx // ncols][idx % ncols].set_visible(False)
  fig.legend(handles=handles, loc="outside lower center",
             ncols=min(len(handles), 6), title="run")
  fig.suptitle(f"{METRIC_LABELS.get(metric, metric)} per layer over training "
               "(mean over mixing weights; lower = more linear)")
  return save_figure(fig, path)


def plot_final_profiles(rows: Sequence[Mapping], path: str, *,
                        runs: Sequence[str] | None = None,
                        metrics: Sequence[str] = METRICS,
                        epoch: int | None = None,
                        colors: Mapping[str, object] | None = None) -> str:
  """Per-layer profile at each run's final epoch (or ``epoch``), one line per run."""
  avg = average_over_weights(rows)
  metrics = metrics_present(avg, metrics)
  runs = list(runs or dict.fromkeys(r["run"] for r in avg))
  layers = layer_order(r["layer"] for r in avg)
  by_run = dict(run_colors(runs), **(colors or {}))
  colors = [by_run[r] for r in runs]
  last = {run: max((r["epoch"] for r in avg if r["run"] == run), default=None)
          for run in runs}
  shared = epoch if epoch is not None else (
      next(iter(set(last.values()))) if len(set(last.values())) == 1
      else None)
  fig, axes = new_figure(1, len(metrics), 4.6 * len(metrics), 3.9)
  for ax, metric in zip(axes[0], metrics):
    table = _table(avg, metric)
    values = []
    for color, run in zip(colors, runs):
      have = sorted({k[1] for k in table if k[0] == run})
      if not have:
        continue
      e = epoch if epoch is not None else have[-1]
      if e not in have:
        log.warning("plot_final_profiles: run %s has no epoch %d.", run, e)
        continue
      y = [table[(run, e, l)]["value"] if (run, e, l) in table else np.nan
           for l in layers]
      err = [table[(run, e, l)]["stderr"] if (run, e, l) in table else np.nan
             for l in layers]
      values += y
      ax.plot(range(len(layers)), y, "o-", color=color,
              label=run if shared is not None else f"{run} (epoch {e})")
      band(ax, range(len(layers)), y, err, color)
    profile_axis(ax, layers, wants_log(values))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric) + " (mean over weights)")
    ax.set_title(METRIC_LABELS.get(metric, metric))
    ax.legend(fontsize="small")
  which = ("final epoch" if epoch is None else "epoch") + (
      f" {shared}" if shared is not None else "")
  fig.suptitle(f"linearity by layer at the {which}, per run (lower = more "
               "linear)")
  return save_figure(fig, path)
