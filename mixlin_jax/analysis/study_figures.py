"""Figures of a study's aggregate: seed means with 95% t bands, paired differences.

* ``paired_differences.png`` -- the figure that answers claims (a) and (b)
  at a glance: per layer, (regime - baseline) / baseline's mean at the final
  epoch, one marker per regime with its 95% interval (the paired
  difference's interval scaled by the same baseline mean), a zero line.
  Above zero: less linear than the baseline.
* ``final_profiles.png`` -- per-layer value at the final epoch, mean over
  seeds with a 95% band, one line per regime, one panel per metric.
* ``layers_over_epochs.png`` -- the primary metric per layer over training,
  mean over seeds with bands, one line per regime.
* ``accuracy_curves.png`` -- test accuracy (student solid, EMA teacher
  dashed), clean labelled cross-entropy and test cross-entropy, with bands.
* ``convergence.png`` -- claim (c)'s two quantities per regime, epochs to
  the baseline's final accuracy and the mean test accuracy over epochs:
  each seed a dot, the mean with its interval.
* ``verdicts_over_training.png`` -- the "when": per layer, the paired
  difference regime - baseline of the primary metric at every epoch with
  its 95% band, one line per regime, a zero line; the first panel is the
  test accuracy difference (the precondition of (b) and (c)).

Every regime has its project-wide colour (``figures.REGIME_COLORS``).
Layers excluded as linear by construction are greyed out and labelled;
layers flagged dead/collapsed at the final epoch are hatched, labelled and
drawn without a value (never as "perfectly linear").
"""

from __future__ import annotations

import math
import os

import numpy as np

from mixlin_jax.analysis import claims as claims_lib
from mixlin_jax.analysis import stats
from mixlin_jax.analysis.figures import (
    epoch_axis, new_figure, regime_color, save_figure, wants_log)
from mixlin_jax.analysis.tables import METRIC_LABELS, display_layer
from mixlin_jax.linearity import METRICS


def _layer_ticks(ax, layers, excluded, collapsed=()):
  def label(l):
    if l in excluded:
      return display_layer(l) + " (linear by\nconstruction)"
    if l in collapsed:
      return display_layer(l) + " (collapsed:\nleft out)"
    return display_layer(l)
  ax.set_xticks(range(len(layers)), [label(l) for l in layers],
                rotation=30 if len(layers) > 5 else 0,
                ha="right" if len(layers) > 5 else "center", fontsize=8)
  for i, l in enumerate(layers):
    if l in excluded:
      ax.axvspan(i - 0.45, i + 0.45, color="0.9", zorder=0)
    elif l in collapsed:
      ax.axvspan(i - 0.45, i + 0.45, color="0.9", hatch="//", zorder=0)
  ax.set_xlabel("layer (network order)")
  ax.grid(True, alpha=0.3)


def _band(ax, x, lo, hi, color):
  x, lo, hi = (np.asarray(v, float) for v in (x, lo, hi))
  ok = np.isfinite(lo) & np.isfinite(hi)
  if ok.any():
    ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.18,
                    linewidth=0)


def plot_paired_differences(agg, path: str) -> str:
  d = agg.data
  paired = agg.paired[agg.paired["epoch"] == d.final_epoch]
  metrics = [m for m in METRICS if m in set(paired["metric"])]
  others = [r for r in d.regimes if r != agg.baseline]
  fig, axes = new_figure(1, len(metrics), 4.8 * len(metrics), 4.2)
  width = 0.7 / max(len(others), 1)
  for ax, metric in zip(axes[0], metrics):
    ax.axhline(0.0, color="black", lw=0.8)
    for j, regime in enumerate(others):
      g = paired[(paired["regime"] == regime) & (paired["metric"] == metric)]
      g = g.set_index("layer")
      xs, ys, lo, hi = [], [], [], []
      for i, layer in enumerate(d.layers):
        if layer not in g.index or layer in agg.excluded or (
            layer in agg.collapsed):
          continue
        r = g.loc[layer]
        base = r["baseline_mean"]
        if not (math.isfinite(base) and base != 0):
          continue
        xs.append(i - 0.35 + width * (j + 0.5))
        ys.append(100 * r["mean_diff"] / abs(base))
        lo.append(100 * r["ci_low"] / abs(base))
        hi.append(100 * r["ci_high"] / abs(base))
      ys_a, lo_a, hi_a = (np.asarray(v, float) for v in (ys, lo, hi))
      err = np.vstack([ys_a - lo_a, hi_a - ys_a]) if len(ys) else None
      if err is not None:
        err = np.where(np.isfinite(err), err, 0.0)
      ax.errorbar(xs, ys, yerr=err, fmt="o", color=regime_color(regime),
                  capsize=3, label=regime, ms=5)
    _layer_ticks(ax, d.layers, agg.excluded, agg.collapsed)
    ax.set_ylabel(f"({'regime'} - {agg.baseline}) / {agg.baseline}, %")
    ax.set_title(METRIC_LABELS.get(metric, metric))
    ax.legend(fontsize="small")
  fig.suptitle(f"paired difference from {agg.baseline} at epoch "
               f"{d.final_epoch}, mean over {len(d.seeds)} seeds with 95% CI "
               "(above 0: less linear)")
  return save_figure(fig, path)


def plot_final_profiles(agg, path: str) -> str:
  d = agg.data
  s = agg.summary[agg.summary["epoch"] == d.final_epoch]
  metrics = [m for m in METRICS if m in set(s["metric"])]
  fig, axes = new_figure(1, len(metrics), 4.8 * len(metrics), 4.2)
  for ax, metric in zip(axes[0], metrics):
    values = []
    for regime in d.regimes:
      g = s[(s["regime"] == regime) & (s["metric"] == metric)].set_index(
          "layer")
      keep = [i for i, l in enumerate(d.layers) if l in g.index and
              l not in agg.excluded and l not in agg.collapsed]
      if not keep:
        continue
      rows = g.loc[[d.layers[i] for i in keep]]
      color = regime_color(regime)
      ax.plot(keep, rows["mean"], "o-", color=color, label=regime)
      _band(ax, keep, rows["ci_low"], rows["ci_high"], color)
      values += rows["mean"].tolist()
    _layer_ticks(ax, d.layers, agg.excluded, agg.collapsed)
    if wants_log(values):
      ax.set_yscale("log")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(METRIC_LABELS.get(metric, metric))
    ax.legend(fontsize="small")
  fig.suptitle(f"linearity by layer at epoch {d.final_epoch}: mean over "
               f"{len(d.seeds)} seeds, 95% band (lower = more linear)")
  return save_figure(fig, path)


def plot_layers_over_epochs(agg, path: str,
                            metric: str = claims_lib.PRIMARY_METRIC) -> str:
  d = agg.data
  s = agg.summary[agg.summary["metric"] == metric]
  layers = [l for l in d.layers if l not in agg.excluded]
  ncols = min(len(layers), 3 if len(layers) <= 6 else 4)
  nrows = math.ceil(len(layers) / ncols)
  fig, axes = new_figure(nrows, ncols, 3.6 * ncols, 2.8 * nrows + 0.6)
  for idx, layer in enumerate(layers):
    ax = axes[idx // ncols][idx % ncols]
    values = []
    for regime in d.regimes:
      g = s[(s["regime"] == regime) & (s["layer"] == layer)].sort_values(
          "epoch")
      color = regime_color(regime)
      ax.plot(g["epoch"], g["mean"], "-", color=color, label=regime)
      _band(ax, g["epoch"], g["ci_low"], g["ci_high"], color)
      values += g["mean"].tolist()
    if wants_log(values):
      ax.set_yscale("log")
    ax.set_title(display_layer(layer) + (
        " (collapsed at the end in some runs)" if layer in agg.collapsed
        else ""), fontsize=9 if layer in agg.collapsed else None)
    epoch_axis(ax)
    ax.grid(True, alpha=0.3)
  for idx in range(len(layers), nrows * ncols):
    axes[idx // ncols][idx % ncols].set_visible(False)
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center",
             ncols=min(len(labels), 6))
  fig.suptitle(f"{METRIC_LABELS.get(metric, metric)} per layer over "
               f"training: mean over seeds, 95% band")
  return save_figure(fig, path)


def plot_accuracy_curves(agg, path: str) -> str:
  d = agg.data
  panels = (("test accuracy", ("test_accuracy", "teacher_accuracy")),
            ("clean labelled cross-entropy", ("labelled_loss",)),
            ("test cross-entropy", ("test_loss",)))
  fig, axes = new_figure(1, 3, 14.0, 4.0)
  for ax, (title, keys) in zip(axes[0], panels):
    for regime in d.regimes:
      g = d.curves[d.curves["regime"] == regime]
      color = regime_color(regime)
      for key in keys:
        rows = [(e, stats.mean_interval(x[key].tolist()))
                for e, x in g.groupby("epoch")]
        epochs = [e for e, _ in rows]
        ax.plot(epochs, [r["mean"] for _, r in rows],
                "--" if key == "teacher_accuracy" else "-", color=color,
                label=regime if key == keys[0] else None)
        _band(ax, epochs, [r["ci_low"] for _, r in rows],
              [r["ci_high"] for _, r in rows], color)
    ax.set_title(title + (" (dashed: EMA teacher)" if len(keys) > 1 else ""))
    epoch_axis(ax)
    ax.grid(True, alpha=0.3)
  if "labelled_loss" in d.curves and wants_log(d.curves["labelled_loss"]):
    axes[0][1].set_yscale("log")
  axes[0][0].axhline(agg.convergence_targets["baseline_final_accuracy"],
                     color="0.4", lw=0.8, ls=":")
  axes[0][0].legend(fontsize="small")
  fig.suptitle(f"mean over {len(d.seeds)} seeds with 95% bands; dotted: "
               f"the convergence target ({agg.baseline}'s mean final "
               "accuracy)")
  return save_figure(fig, path)


def plot_convergence(agg, path: str) -> str:
  d = agg.data
  conv = agg.convergence
  target = agg.convergence_targets["baseline_final_accuracy"]
  fig, axes = new_figure(1, 2, 10.0, 3.8)
  for ax, (q, label) in zip(axes[0], (
      ("epochs_to_baseline_final",
       f"epochs to test accuracy {target:.3g} ({agg.baseline}'s final)"),
      ("accuracy_auc", "mean test accuracy over epochs"))):
    for i, regime in enumerate(d.regimes):
      g = conv[conv["regime"] == regime]
      color = regime_color(regime)
      jitter = np.linspace(-0.15, 0.15, max(len(g), 1))
      ax.scatter(i + jitter[:len(g)], g[q], color=color, s=14, alpha=0.7)
      s = stats.mean_interval(g[q].tolist())
      err = None
      if math.isfinite(s["ci_low"]):
        err = [[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]]
      ax.errorbar([i + 0.3], [s["mean"]], yerr=err, fmt="D", color=color,
                  capsize=3)
    if q == "epochs_to_baseline_final":
      ax.axhline(d.final_epoch + 1, color="0.5", ls=":", lw=0.8)
      ax.set_ylabel("epochs")
    ax.set_xticks(range(len(d.regimes)), d.regimes)
    ax.set_title(label)
    ax.grid(True, alpha=0.3)
  fig.suptitle("convergence per regime: dots = seeds, diamond = mean with "
               "95% CI; dotted = never reached (final epoch + 1)")
  return save_figure(fig, path)


def plot_verdicts_over_training(agg, path: str,
                                metric: str = claims_lib.PRIMARY_METRIC
                                ) -> str:
  d = agg.data
  paired = agg.paired[agg.paired["metric"] == metric]
  others = [r for r in d.regimes if r != agg.baseline]
  layers = [l for l in d.layers if l not in agg.excluded]
  panels = ["accuracy"] + layers
  ncols = min(len(panels), 3 if len(panels) <= 6 else 4)
  nrows = math.ceil(len(panels) / ncols)
  fig, axes = new_figure(nrows, ncols, 3.6 * ncols, 2.8 * nrows + 0.6)
  for idx, panel in enumerate(panels):
    ax = axes[idx // ncols][idx % ncols]
    ax.axhline(0.0, color="black", lw=0.8)
    for regime in others:
      if panel == "accuracy":
        g = agg.accuracy_paired[agg.accuracy_paired["regime"] == regime]
      else:
        g = paired[(paired["regime"] == regime) & (paired["layer"] == panel)]
      g = g.sort_values("epoch")
      color = regime_color(regime)
      ax.plot(g["epoch"], g["mean_diff"], "-", color=color, label=regime)
      _band(ax, g["epoch"], g["ci_low"], g["ci_high"], color)
    if panel == "accuracy":
      ax.set_title(f"test accuracy - {agg.baseline} (precondition: > 0)",
                   fontsize=9)
    else:
      ax.set_title(display_layer(panel) + (
          " (collapsed at the end in some runs)" if panel in agg.collapsed
          else ""), fontsize=9 if panel in agg.collapsed else None)
    epoch_axis(ax)
    ax.grid(True, alpha=0.3)
  for idx in range(len(panels), nrows * ncols):
    axes[idx // ncols][idx % ncols].set_visible(False)
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center",
             ncols=min(max(len(labels), 1), 6))
  fig.suptitle(f"paired difference regime - {agg.baseline} over training, "
               f"{METRIC_LABELS.get(metric, metric)} per layer (below 0: "
               f"more linear), mean over {len(d.seeds)} seeds, 95% band")
  return save_figure(fig, path)


def write_figures(agg, folder: str) -> list[str]:
  os.makedirs(folder, exist_ok=True)
  return [
      plot_paired_differences(agg, os.path.join(folder,
                                                "paired_differences.png")),
      plot_final_profiles(agg, os.path.join(folder, "final_profiles.png")),
      plot_layers_over_epochs(agg, os.path.join(folder,
                                                "layers_over_epochs.png")),
      plot_accuracy_curves(agg, os.path.join(folder, "accuracy_curves.png")),
      plot_convergence(agg, os.path.join(folder, "convergence.png")),
      plot_verdicts_over_training(
          agg, os.path.join(folder, "verdicts_over_training.png")),
  ]
