"""A study's aggregate: statistics over seeds, verdicts, tables and figures.

Reads only the plain files of each finished run under ``<out>/runs/``
(``config.json`` and ``metrics.jsonl``: the committed part of a study), so
a committed study regenerates its whole aggregate without checkpoints or
recompute.  Writes into ``<out>``::

    tables/runs.csv                  one row per run: status, final accuracies
    tables/linearity_by_seed.csv     per (regime, seed, epoch, layer, metric),
                                     at 25/50/75/100% of training:
                                     value (mean over weights) and tuple_sem
    tables/linearity_summary.csv     per (regime, epoch, layer, metric): mean over
                                     seeds, std, 95% t interval, mean tuple_sem
    tables/paired_differences.csv    per (regime, epoch, layer, metric): regime -
                                     baseline over seeds, mean, 95% interval, p
    tables/accuracy.csv              per regime: final test accuracy (student,
                                     EMA teacher) and clean labelled loss
    tables/convergence.csv           per run: epochs to the baseline's final
                                     accuracy, accuracy AUC, epochs to the
                                     labelled-loss target; paired differences
                                     in tables/convergence_paired.csv
    tables/accuracy_paired.csv       per (regime, epoch): test accuracy -
                                     baseline (the claims' precondition)
    tables/verdicts_over_training.csv per (claim, regime, layer, epoch): the
                                     primary metric's paired difference and
                                     verdict
    claims.md, claims.json           the claims' tests and verdicts
    figures/*.png                    see :func:`write_figures`

Statistics: :mod:`mixlin_jax.analysis.stats`; the claims' tests:
:mod:`mixlin_jax.analysis.claims`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from typing import Sequence

import numpy as np
import pandas as pd

from mixlin_jax import studies
from mixlin_jax import workdir as workdir_lib
from mixlin_jax.analysis import claims as claims_lib
from mixlin_jax.analysis import stats
from mixlin_jax.analysis.errors import AnalysisError
from mixlin_jax.analysis.tables import (
    METRIC_LABELS, average_over_weights, display_layer, layer_order,
    logged_linearity_rows)
from mixlin_jax.linearity import METRICS

log = logging.getLogger(__name__)

LOSS_TARGET_FACTOR = 1.25  # labelled-loss target = this x the worst regime mean
CURVE_KEYS = {
    "test_accuracy": ("test", "student_accuracy"),
    "teacher_accuracy": ("test", "teacher_accuracy"),
    "test_loss": ("test", "student_loss"),
    "labelled_loss": ("labelled", "student_loss"),
    "labelled_accuracy": ("labelled", "student_accuracy"),
    "train_loss": ("train", "loss"),
}


def regime_sort_key(regime: str):
  """erm first, then supmixK, then mixK, by K."""
  m = re.match(r"^(erm|supmix|mix)(\d*)$", regime)
  if not m:
    return (9, regime)
  return ({"erm": 0, "supmix": 1, "mix": 2}[m[1]], int(m[2] or 0), regime)


@dataclasses.dataclass
class StudyData:
  """What the finished runs of a study logged, as tidy frames."""
  out: str
  statuses: list  # studies.RunStatus of every run folder (and planned run)
  regimes: list[str]
  seeds: list[int]
  layers: list[str]
  linearity: pd.DataFrame  # regime, seed, epoch, layer, metric, value, tuple_sem
  curves: pd.DataFrame  # regime, seed, epoch, CURVE_KEYS...
  config: dict  # flat config of the first finished run
  # (regime, seed, epoch, layer) of every layer a run's record flagged as
  # dead/collapsed (most tuples indistinguishable there).
  collapsed: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
  collapse_flag_recorded: bool = False  # any record carries the flag

  @property
  def final_epoch(self) -> int:
    return int(self.curves["epoch"].max())


def load(out: str, regimes: Sequence[str] | None = None,
         seeds: Sequence[int] | None = None) -> StudyData:
  """Reads every finished run of ``<out>/runs``.

  ``regimes``/``seeds`` (default: those found) define the expected grid;
  runs of the grid that are missing or incomplete are listed in
  ``statuses`` and left out of every statistic.
  """
  found = studies.existing_runs(out)
  regimes = list(regimes or sorted({s.regime for s in found},
                                   key=regime_sort_key))
  seeds = sorted(seeds or {s.seed for s in found})
  grid = [studies.RunSpec(r, s) for s in seeds for r in regimes]
  statuses = [studies.run_status(out, spec) for spec in grid]
  lin_frames, curve_rows, collapsed_rows, config = [], [], [], None
  flag_recorded = False
  for st in statuses:
    if not st.finished:
      continue
    config = config or workdir_lib.read_config(st.workdir)
    rows = average_over_weights(logged_linearity_rows(st.workdir, st.spec.name))
    frame = pd.DataFrame(rows)
    if not frame.empty:
      frame = frame.rename(columns={"stderr": "tuple_sem"})
      frame["regime"], frame["seed"] = st.spec.regime, st.spec.seed
      lin_frames.append(frame[["regime", "seed", "epoch", "layer", "metric",
                               "value", "tuple_sem"]])
    for record in workdir_lib.read_metrics(st.workdir):
      row = {"regime": st.spec.regime, "seed": st.spec.seed,
             "epoch": int(record["epoch"])}
      for name, (group, key) in CURVE_KEYS.items():
        row[name] = (record.get(group) or {}).get(key, math.nan)
      curve_rows.append(row)
      flag_recorded |= "collapsed_layers" in (record.get("linearity") or {})
      for layer in (record.get("linearity") or {}).get("collapsed_layers", ()):
        collapsed_rows.append({"regime": st.spec.regime, "seed": st.spec.seed,
                               "epoch": row["epoch"], "layer": layer})
  if config is None:
    raise AnalysisError(
        f"{out} holds no finished run (expected folders such as "
        f"{os.path.join(out, studies.RUNS_DIR, 'erm_seed0')}); run the study "
        "first or check --out.")
  linearity = pd.concat(lin_frames, ignore_index=True) if lin_frames else (
      pd.DataFrame(columns=["regime", "seed", "epoch", "layer", "metric",
                            "value", "tuple_sem"]))
  curves = pd.DataFrame(curve_rows).drop_duplicates(
      ["regime", "seed", "epoch"], keep="last")
  done = {(s.spec.regime, s.spec.seed) for s in statuses if s.finished}
  return StudyData(
      out=out, statuses=statuses,
      regimes=[r for r in regimes if any((r, s) in done for s in seeds)],
      seeds=[s for s in seeds if any((r, s) in done for r in regimes)],
      layers=layer_order(linearity["layer"]), linearity=linearity,
      curves=curves.sort_values(["regime", "seed", "epoch"]), config=config,
      collapsed=pd.DataFrame(collapsed_rows,
                             columns=["regime", "seed", "epoch", "layer"]),
      collapse_flag_recorded=flag_recorded)


# ---------------------------------------------------------------------------
# Statistics


def _values(frame: pd.DataFrame, seeds: Sequence[int]) -> list[float]:
  by_seed = dict(zip(frame["seed"], frame["value"]))
  return [by_seed.get(s, math.nan) for s in seeds]


def linearity_summary(data: StudyData) -> pd.DataFrame:
  """Mean over seeds with its 95% t interval, per (regime, epoch, layer, metric)."""
  rows = []
  for (regime, epoch, layer, metric), g in data.linearity.groupby(
      ["regime", "epoch", "layer", "metric"], sort=False):
    s = stats.mean_interval(g["value"].tolist())
    rows.append({"regime": regime, "epoch": int(epoch), "layer": layer,
                 "metric": metric, "n_seeds": s["n"], "mean": s["mean"],
                 "std": s["std"], "ci_low": s["ci_low"],
                 "ci_high": s["ci_high"],
                 "tuple_sem_mean": float(g["tuple_sem"].mean())})
  return _sorted(pd.DataFrame(rows))


def paired_differences(data: StudyData, baseline: str) -> pd.DataFrame:
  """regime - baseline per seed, per (regime, epoch, layer, metric)."""
  lin = data.linearity
  base = {key: g for key, g in lin[lin["regime"] == baseline].groupby(
      ["epoch", "layer", "metric"])}
  rows = []
  for (regime, epoch, layer, metric), g in lin[lin["regime"] != baseline].groupby(
      ["regime", "epoch", "layer", "metric"], sort=False):
    b = base.get((epoch, layer, metric))
    if b is None:
      continue
    d = stats.paired_difference(_values(g, data.seeds), _values(b, data.seeds))
    rows.append({"regime": regime, "baseline": baseline, "epoch": int(epoch),
                 "layer": layer, "metric": metric, "n_pairs": d["n"],
                 "mean_diff": d["mean"], "ci_low": d["ci_low"],
                 "ci_high": d["ci_high"], "p_value": d["p_value"],
                 "baseline_mean": d["baseline_mean"],
                 "relative_diff": d["relative"]})
  return _sorted(pd.DataFrame(rows))


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
  if frame.empty:
    return frame
  keys = [k for k in ("regime", "epoch", "metric", "layer") if k in frame]
  return frame.sort_values(
      keys, key=lambda col: col.map(regime_sort_key) if col.name == "regime"
      else col).reset_index(drop=True)


def accuracy_table(data: StudyData) -> pd.DataFrame:
  """Final-epoch accuracies and clean labelled loss per regime (mean, std, CI)."""
  final = data.curves[data.curves["epoch"] == data.final_epoch]
  rows = []
  for regime in data.regimes:
    g = final[final["regime"] == regime]
    row = {"regime": regime, "n_seeds": len(g)}
    for name in ("test_accuracy", "teacher_accuracy", "labelled_loss",
                 "test_loss"):
      s = stats.mean_interval(g[name].tolist())
      row.update({f"{name}_mean": s["mean"], f"{name}_std": s["std"],
                  f"{name}_ci_low": s["ci_low"],
                  f"{name}_ci_high": s["ci_high"]})
    rows.append(row)
  return pd.DataFrame(rows)


def convergence(data: StudyData, baseline: str) -> tuple[pd.DataFrame, dict]:
  """The convergence quantities of claim (c), and the labelled loss, per run.

  * ``epochs_to_baseline_final`` (the primary test): the first epoch whose
    test accuracy reaches the baseline's mean final test accuracy (the same
    target for every regime, from the baseline's runs alone); a run that
    never gets there counts as ``final_epoch + 1``, marked
    ``baseline_final_censored``.
  * ``accuracy_auc``: the mean test accuracy over epochs 1..E.
  * ``epochs_to_target_labelled_loss`` (description, not a test of (c); see
    :mod:`~mixlin_jax.analysis.claims`): epochs until the clean labelled
    cross-entropy falls to ``LOSS_TARGET_FACTOR`` x the highest regime-mean
    final value, censored likewise.
  """
  final = data.curves[data.curves["epoch"] == data.final_epoch]
  base_final = final[final["regime"] == baseline]["test_accuracy"]
  target_acc = float(base_final.mean())
  loss_target = LOSS_TARGET_FACTOR * float(
      final.groupby("regime")["labelled_loss"].mean().max())
  rows = []
  for (regime, seed), g in data.curves.groupby(["regime", "seed"]):
    epochs = g["epoch"].tolist()
    acc, acc_censored = claims_lib.epochs_to_reach(
        epochs, g["test_accuracy"].tolist(), target_acc, data.final_epoch)
    loss, loss_censored = claims_lib.epochs_to_reach(
        epochs, (-g["labelled_loss"]).tolist(), -loss_target,
        data.final_epoch)
    rows.append({"regime": regime, "seed": int(seed),
                 "baseline_final_accuracy": target_acc,
                 "epochs_to_baseline_final": acc,
                 "baseline_final_censored": acc_censored,
                 "accuracy_auc": claims_lib.accuracy_auc(
                     g["test_accuracy"].tolist()),
                 "target_labelled_loss": loss_target,
                 "epochs_to_target_labelled_loss": loss,
                 "labelled_loss_censored": loss_censored})
  frame = pd.DataFrame(rows)
  frame = frame.sort_values(["regime", "seed"], key=lambda c: c.map(
      regime_sort_key) if c.name == "regime" else c).reset_index(drop=True)
  return frame, {"baseline_final_accuracy": target_acc,
                 "target_labelled_loss": loss_target}


CONVERGENCE_QUANTITIES = ("epochs_to_baseline_final", "accuracy_auc",
                          "epochs_to_target_labelled_loss")


def convergence_paired(conv: pd.DataFrame, seeds: Sequence[int],
                       pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
  """Paired differences of the convergence quantities for (regime, reference) pairs."""
  rows = []
  for regime, reference in pairs:
    a = conv[conv["regime"] == regime].set_index("seed")
    b = conv[conv["regime"] == reference].set_index("seed")
    for quantity in CONVERGENCE_QUANTITIES:
      d = stats.paired_difference(
          [a[quantity].get(s, math.nan) for s in seeds],
          [b[quantity].get(s, math.nan) for s in seeds])
      rows.append({"regime": regime, "reference": reference,
                   "quantity": quantity, "n_pairs": d["n"],
                   "mean_diff": d["mean"], "ci_low": d["ci_low"],
                   "ci_high": d["ci_high"], "p_value": d["p_value"]})
  return pd.DataFrame(rows)


def accuracy_paired(data: StudyData, baseline: str) -> pd.DataFrame:
  """Test accuracy (student) regime - baseline per seed, at every epoch:
  the precondition of claims (b) and (c), and how it develops."""
  curves = data.curves
  rows = []
  for (regime, epoch), g in curves[curves["regime"] != baseline].groupby(
      ["regime", "epoch"], sort=False):
    b = curves[(curves["regime"] == baseline) & (curves["epoch"] == epoch)]
    d = stats.paired_difference(
        [dict(zip(g["seed"], g["test_accuracy"])).get(s, math.nan)
         for s in data.seeds],
        [dict(zip(b["seed"], b["test_accuracy"])).get(s, math.nan)
         for s in data.seeds])
    rows.append({"regime": regime, "baseline": baseline, "epoch": int(epoch),
                 "n_pairs": d["n"], "mean_diff": d["mean"],
                 "ci_low": d["ci_low"], "ci_high": d["ci_high"],
                 "p_value": d["p_value"],
                 "holds": claims_lib.precondition_holds(d)})
  return _sorted(pd.DataFrame(rows, columns=[
      "regime", "baseline", "epoch", "n_pairs", "mean_diff", "ci_low",
      "ci_high", "p_value", "holds"]))


def _interval_of(row) -> dict:
  return {"n": int(row.n_pairs), "mean": row.mean_diff, "ci_low": row.ci_low,
          "ci_high": row.ci_high, "p_value": row.p_value}


def verdicts_over_training(data: StudyData, baseline: str,
                           paired: pd.DataFrame, acc_paired: pd.DataFrame,
                           left_out: Sequence[str]) -> pd.DataFrame:
  """The per-layer test of claims (a) and (b) at every logged epoch.

  One row per (claim, regime, layer, epoch) with the paired difference of
  the primary metric and the verdict; a (b) verdict is
  ``claims.NOT_TESTED`` at an epoch where the precondition (the test
  accuracy difference at that epoch) does not hold.
  """
  prim = paired[paired["metric"] == claims_lib.PRIMARY_METRIC]
  holds = {(r.regime, r.epoch): bool(r.holds) for r in acc_paired.itertuples()}
  rows = []
  for claim in claims_lib.CLAIMS:
    if not claim.layers:
      continue
    layers = claims_lib.claim_layers(claim, data.layers, left_out)
    for regime in claims_lib.regimes_for(claim, data.regimes):
      if regime == baseline:
        continue
      g = prim[(prim["regime"] == regime) & prim["layer"].isin(layers)]
      for r in g.itertuples():
        verdict = claims_lib.layer_verdict(_interval_of(r), claim.direction)
        rows.append({
            "claim": claim.key, "regime": regime, "layer": r.layer,
            "epoch": int(r.epoch), "mean_diff": r.mean_diff,
            "ci_low": r.ci_low, "ci_high": r.ci_high,
            "precondition_holds": holds.get((regime, int(r.epoch)), False),
            "verdict": claims_lib.gated_verdict(
                claim, regime, verdict,
                holds.get((regime, int(r.epoch)), False))})
  frame = pd.DataFrame(rows, columns=[
      "claim", "regime", "layer", "epoch", "mean_diff", "ci_low", "ci_high",
      "precondition_holds", "verdict"])
  if frame.empty:
    return frame
  order = {l: i for i, l in enumerate(data.layers)}
  return frame.sort_values(
      ["claim", "regime", "layer", "epoch"],
      key=lambda c: (c.map(regime_sort_key) if c.name == "regime" else
                     c.map(order) if c.name == "layer" else c)
  ).reset_index(drop=True)


def stability_table(over: pd.DataFrame) -> pd.DataFrame:
  """Per (claim, regime, layer): the first epoch from which the verdict no
  longer changes (``claims.stable_from``) and the final verdict."""
  rows = []
  for (claim, regime, layer), g in over.groupby(
      ["claim", "regime", "layer"], sort=False):
    g = g.sort_values("epoch")
    rows.append({"claim": claim, "regime": regime, "layer": layer,
                 "final_verdict": g["verdict"].iloc[-1],
                 "stable_from": claims_lib.stable_from(
                     g["epoch"].tolist(), g["verdict"].tolist())})
  return pd.DataFrame(rows, columns=["claim", "regime", "layer",
                                     "final_verdict", "stable_from"])


def excluded_layers(data: StudyData) -> list[str]:
  """Layers linear by construction (see ``claims``): tiny error in every run."""
  lin = data.linearity
  final = lin[(lin["epoch"] == data.final_epoch) &
              (lin["metric"] == claims_lib.PRIMARY_METRIC)]
  worst = final.groupby("layer")["value"].max()
  return [l for l in data.layers
          if l in worst and worst[l] < claims_lib.LINEAR_BY_CONSTRUCTION]


def collapsed_layers(data: StudyData) -> dict[str, list[str]]:
  """Layers flagged dead/collapsed at the final epoch -> the runs flagging
  them.  Such a layer has no meaningful linearity (its points are
  indistinguishable), so the claims leave it out and say so."""
  c = data.collapsed
  if c.empty:
    return {}
  final = c[c["epoch"] == data.final_epoch]
  return {layer: [f"{r}_seed{s}" for r, s in zip(g["regime"], g["seed"])]
          for layer, g in final.groupby("layer")}


def k_pairs(regimes: Sequence[str]) -> list[tuple[str, str]]:
  """(mixK, mix2) and (supmixK, supmix2) for every K > 2 in the study."""
  out = []
  for family in ("mix", "supmix"):
    if f"{family}2" not in regimes:
      continue
    for r in regimes:
      m = re.match(rf"^{family}(\d+)$", r)
      if m and int(m[1]) > 2:
        out.append((r, f"{family}2"))
  return out


@dataclasses.dataclass
class Aggregate:
  data: StudyData
  baseline: str
  summary: pd.DataFrame
  paired: pd.DataFrame
  accuracy: pd.DataFrame
  convergence: pd.DataFrame
  convergence_targets: dict
  convergence_paired: pd.DataFrame
  excluded: list[str]
  verdicts: list[dict]
  collapsed: dict = dataclasses.field(default_factory=dict)
  # Test accuracy regime - baseline at every epoch (the precondition's
  # quantity) and the precondition rows at the final epoch.
  accuracy_paired: pd.DataFrame = dataclasses.field(
      default_factory=pd.DataFrame)
  precondition: list = dataclasses.field(default_factory=list)
  # Per-layer verdicts of (a) and (b) at every epoch, and their stability.
  over_training: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
  stability: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)


def aggregate(out: str, baseline: str | None = None,
              regimes: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None) -> Aggregate:
  """Every statistic and verdict of the study in ``out`` (writes nothing)."""
  data = load(out, regimes, seeds)
  baseline = baseline or ("erm" if "erm" in data.regimes else data.regimes[0])
  if baseline not in data.regimes:
    raise AnalysisError(f"baseline regime {baseline!r} has no finished run "
                        f"in {out} (finished: {', '.join(data.regimes)})")
  if len(data.regimes) < 2:
    raise AnalysisError(
        f"nothing to compare in {out}: every finished run is of the "
        f"baseline regime {baseline!r}; a study needs another regime "
        "(e.g. --regimes=erm,mix2)")
  summary = linearity_summary(data)
  paired = paired_differences(data, baseline)
  conv, targets = convergence(data, baseline)
  others = [r for r in data.regimes if r != baseline]
  conv_paired = convergence_paired(
      conv, data.seeds, [(r, baseline) for r in others] + k_pairs(data.regimes))
  excluded = excluded_layers(data)
  collapsed = collapsed_layers(data)
  acc_paired = accuracy_paired(data, baseline)
  acc_final = {r.regime: _interval_of(r) for r in acc_paired[
      acc_paired["epoch"] == data.final_epoch].itertuples()}
  pre = claims_lib.precondition(data.regimes, baseline, acc_final)
  final = paired[paired["epoch"] == data.final_epoch]
  lin_diff = {(r.regime, r.layer, r.metric): {
      "n": r.n_pairs, "mean": r.mean_diff, "ci_low": r.ci_low,
      "ci_high": r.ci_high, "p_value": r.p_value,
      "baseline_mean": r.baseline_mean, "relative": r.relative_diff}
              for r in final.itertuples()}
  conv_diff = {}
  for r in conv_paired[conv_paired["reference"] == baseline].itertuples():
    conv_diff.setdefault(r.regime, {})[r.quantity] = _interval_of(r)
  metrics = [m for m in METRICS if m in set(data.linearity["metric"])]
  left_out = excluded + sorted(collapsed)
  verdicts = claims_lib.evaluate(
      claims_lib.CLAIMS, data.regimes, baseline, data.layers, left_out,
      metrics, lin_diff, conv_diff,
      precondition_met={p["regime"]: p["holds"] for p in pre})
  over = verdicts_over_training(data, baseline, paired, acc_paired, left_out)
  return Aggregate(data, baseline, summary, paired, accuracy_table(data),
                   conv, targets, conv_paired, excluded, verdicts, collapsed,
                   acc_paired, pre, over, stability_table(over))


# ---------------------------------------------------------------------------
# Writing


def _fmt(x, digits: int = 3) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "-"
  if isinstance(x, (int, np.integer)):
    return str(int(x))
  return f"{x:.{digits}g}"


def _interval(d: dict, digits: int = 3) -> str:
  return (f"{_fmt(d['mean'], digits)} [{_fmt(d['ci_low'], digits)}, "
          f"{_fmt(d['ci_high'], digits)}]")


def write_tables(agg: Aggregate) -> list[str]:
  folder = os.path.join(agg.data.out, "tables")
  os.makedirs(folder, exist_ok=True)
  runs = pd.DataFrame([{
      "run": st.spec.name, "regime": st.spec.regime, "seed": st.spec.seed,
      "status": st.state, "epochs_done": st.epochs_done}
                       for st in agg.data.statuses])
  final = agg.data.curves[agg.data.curves["epoch"] == agg.data.final_epoch]
  runs = runs.merge(final[["regime", "seed", "test_accuracy",
                           "teacher_accuracy", "labelled_loss"]],
                    on=["regime", "seed"], how="left")
  # Per seed only at the epochs verdicts along training are reported (every
  # epoch of a 60-epoch, 20-run study would make a file of over 1 MB; each
  # run's metrics.jsonl has them all).
  lin = agg.data.linearity
  by_seed = lin[lin["epoch"].isin(claims_lib.training_checkpoints(
      agg.data.final_epoch))]
  frames = {"runs": runs, "linearity_by_seed": by_seed,
            "linearity_summary": agg.summary,
            "paired_differences": agg.paired, "accuracy": agg.accuracy,
            "convergence": agg.convergence,
            "convergence_paired": agg.convergence_paired,
            "accuracy_paired": agg.accuracy_paired,
            "verdicts_over_training": agg.over_training}
  paths = []
  for name, frame in frames.items():
    path = os.path.join(folder, f"{name}.csv")
    frame.to_csv(path, index=False, float_format="%.6g")
    paths.append(path)
  return paths


def _short(verdict: str) -> str:
  return "not tested" if verdict == claims_lib.NOT_TESTED else verdict


def precondition_lines(agg: Aggregate) -> list[str]:
  """The precondition table of ``claims.md`` (and of docs/results.md)."""
  lines = [f"| regime | final test accuracy - {agg.baseline}, mean [95% CI] "
           "| precondition of (b), (c) |", "|---|---|---|"]
  for p in agg.precondition:
    state = (("**holds**" if p["holds"] else "**fails**: (b), (c) not tested")
             if p["applies"] else "(for information)")
    lines.append(f"| {p['regime']} | {_interval(p, 3)} | {state} |")
  return lines + [""]


def precondition_summary(agg: Aggregate) -> str:
  """One sentence: for which unsupervised regimes the precondition holds."""
  applies = [p for p in agg.precondition if p["applies"]]
  if not applies:
    return "This study has no unsupervised (mixK) regime."
  held = [p["regime"] for p in applies if p["holds"]]
  failed = [p["regime"] for p in applies if not p["holds"]]
  parts = []
  if held:
    parts.append(f"unsupervised mixup beats {agg.baseline} in final test "
                 f"accuracy ({', '.join(held)}): the precondition holds")
  if failed:
    parts.append(f"unsupervised mixup was not effective at this budget "
                 f"({', '.join(failed)}: no final test accuracy gain over "
                 f"{agg.baseline} whose interval lies above 0), so (b) and "
                 "(c) are not tested for "
                 + ("it" if len(failed) == 1 else "them"))
  text = "; ".join(parts)
  return text[0].upper() + text[1:] + "."


def claims_markdown(agg: Aggregate, title: str) -> str:
  """``claims.md``: the precondition, the tests (fixed in advance), then
  verdicts with numbers, at the final epoch and along training."""
  d = agg.data
  c = d.config
  lines = [f"# Claims: {title}", ""]
  lines += [
      f"Study `{os.path.basename(os.path.normpath(d.out))}`: config `{c.get('model.name')}` on "
      f"`{c.get('data.dataset')}` ({c.get('data.num_labels')} labels, "
      f"{c.get('train.epochs')} epochs, linearity on "
      f"{c.get('linearity.num_tuples')} {c.get('linearity.split')} tuples "
      f"of K={c.get('linearity.num_points')}); regimes "
      f"{', '.join(d.regimes)}; seeds {', '.join(map(str, d.seeds))}; "
      f"baseline `{agg.baseline}`.", ""]
  lines += ["## Precondition: does unsupervised mixup beat the baseline?", "",
            "Paired difference of the final test accuracy (student), regime "
            f"- {agg.baseline} over seeds. Claims (b) and (c) are tested for "
            "an unsupervised regime only where its interval lies above 0.",
            ""]
  lines += precondition_lines(agg)
  lines += [precondition_summary(agg), ""]
  missing = [st for st in d.statuses if not st.finished]
  if missing:
    lines += ["**Not included** (missing or incomplete runs): " + ", ".join(
        f"{st.spec.name} ({st.state})" for st in missing) + ".", ""]
  lines += [
      "How the claims are tested was fixed before any study was aggregated "
      "(see `mixlin_jax/analysis/claims.py` and docs/studies.md): paired "
      "difference regime - baseline over seeds at the final epoch, mean over "
      "the mixing weights, 95% Student-t interval; *supported* when the "
      "interval excludes 0 in the claimed direction, *contradicted* when it "
      "excludes 0 the other way, else *inconclusive*. Primary metric: "
      "interpolation error; the others are reported beside it. Convergence: "
      "epochs until the student's test accuracy reaches the baseline's mean "
      "final accuracy "
      f"({_fmt(agg.convergence_targets['baseline_final_accuracy'])}; never: "
      "final epoch + 1), and the mean test accuracy over epochs.", ""]
  if agg.excluded:
    lines += ["Excluded as linear by construction (final interpolation error "
              f"< {claims_lib.LINEAR_BY_CONSTRUCTION:g} in every run): " +
              ", ".join(display_layer(l) for l in agg.excluded) + ".", ""]
  if agg.collapsed:
    lines += ["Left out as dead/collapsed at the final epoch (most tuples' "
              "points indistinguishable there; not \"perfectly linear\"): " +
              "; ".join(f"{display_layer(l)} in {', '.join(runs)}"
                        for l, runs in sorted(agg.collapsed.items())) + ".",
              ""]
  elif d.collapse_flag_recorded:
    lines += ["No layer was flagged dead/collapsed at the final epoch.", ""]
  else:
    lines += ["These runs were logged before the dead/collapsed flag "
              "existed (no record carries `collapsed_layers`; their means "
              "include degenerate tuples).", ""]
  lines += ["## Verdicts at the final epoch", "",
            "| claim | regime | primary verdict | " +
            " | ".join(METRIC_LABELS[m] for m in METRICS if m != "interp_error"
                       ) + " | layers (supported / contradicted / "
            "inconclusive, primary) |",
            "|---|---|---|" + "---|" * (len(METRICS) - 1) + "---|"]
  for v in agg.verdicts:
    lines.append(verdict_row(v))
  lines.append("")
  lines += _over_training_lines(agg)
  for claim in claims_lib.CLAIMS:
    entries = [v for v in agg.verdicts if v["claim"] == claim.key]
    lines += [f"## ({claim.key}) {claim.statement}", ""]
    if not entries:
      lines += ["No regime of this study tests this claim.", ""]
      continue
    for v in entries:
      if "metrics" not in v:
        continue
      note = ("" if v["tested"] else
              " **Not tested (precondition failed)**: the per-layer numbers "
              "below are for information, not verdicts.")
      lines += [f"**{v['regime']} - {v['baseline']}**, final epoch, per "
                "layer: mean difference [95% CI] (p), verdict." + note, "",
                "| layer | " + " | ".join(METRIC_LABELS[m] for m in
                                          v["metrics"]) + " |",
                "|---|" + "---|" * len(v["metrics"])]
      for i, layer in enumerate(v["layers"]):
        cells = []
        for m, res in v["metrics"].items():
          r = res["layers"][i]
          cells.append(f"{_interval(r)} (p={_fmt(r['p_value'], 2)}) "
                       + (r["verdict"] if v["tested"] else "-"))
        lines.append(f"| {display_layer(layer)} | " + " | ".join(cells) + " |")
      lines.append("")
    if claim.key == "c":
      lines += _convergence_lines(agg)
  lines += _k_lines(agg)
  acc = agg.accuracy
  lines += ["## Final accuracy (mean +- std over seeds)", "",
            "| regime | seeds | test accuracy (student) | EMA teacher | "
            "clean labelled loss |", "|---|---|---|---|---|"]
  for r in acc.itertuples():
    lines.append(f"| {r.regime} | {r.n_seeds} | "
                 f"{_fmt(r.test_accuracy_mean, 4)} +- {_fmt(r.test_accuracy_std, 2)} | "
                 f"{_fmt(r.teacher_accuracy_mean, 4)} +- {_fmt(r.teacher_accuracy_std, 2)} | "
                 f"{_fmt(r.labelled_loss_mean, 3)} +- {_fmt(r.labelled_loss_std, 2)} |")
  lines.append("")
  return "\n".join(lines)


def verdict_row(v: dict) -> str:
  """One row of the verdict table (claim, regime, primary verdict, the
  other metrics' verdicts, the primary metric's layer counts)."""
  n_other = len(METRICS) - 1
  head = f"| ({v['claim']}) | {v['regime']} | **{_short(v['verdict'])}** | "
  if "metrics" in v:
    prim = v["metrics"].get(claims_lib.PRIMARY_METRIC, {"layers": []})
    counts = [sum(r["verdict"] == k for r in prim["layers"]) for k in (
        claims_lib.SUPPORTED, claims_lib.CONTRADICTED,
        claims_lib.INCONCLUSIVE)]
    if not v["tested"]:
      return head + " | ".join("-" for _ in range(n_other)) + " | - |"
    others = [v["metrics"].get(m, {}).get("verdict", "-")
              for m in METRICS if m != "interp_error"]
    return head + " | ".join(others) + " | " + " / ".join(
        map(str, counts)) + " |"
  tests = v["tests"]
  cells = [f"{label}: {_interval(tests[name])}"
           + ("" if not v["tested"] or name == claims_lib.PRIMARY_CONVERGENCE
              else f" {tests[name]['verdict']}")
           for name, label in (("epochs_to_baseline_final",
                                "epochs to baseline's final accuracy"),
                               ("accuracy_auc", "mean accuracy over epochs"))]
  return head + " | ".join("-" for _ in range(n_other)) + " | " + "; ".join(
      cells) + " |"


def _over_training_lines(agg: Aggregate) -> list[str]:
  over = agg.over_training
  final_epoch = agg.data.final_epoch
  checkpoints = claims_lib.training_checkpoints(final_epoch)
  lines = ["## Verdicts along training", "",
           "The per-layer test of the primary metric at "
           + ", ".join(f"{round(100 * e / final_epoch)}% (epoch {e})"
                       for e in checkpoints)
           + " of training; an unsupervised regime's (b) verdict is given "
           "only at epochs where its test accuracy exceeds the baseline's "
           "(the precondition at that epoch), else *not tested*. *Stable "
           "from*: the first epoch from which the layer's verdict no longer "
           "changes. Every epoch: `tables/verdicts_over_training.csv`, "
           "`figures/verdicts_over_training.png`.", ""]
  if over.empty:
    return lines + ["No layer verdicts (no linearity logged).", ""]
  acc = agg.accuracy_paired.set_index(["regime", "epoch"])
  stable = {(r.claim, r.regime, r.layer): r.stable_from
            for r in agg.stability.itertuples()}
  lines += ["| claim | regime | layer | " + " | ".join(
      f"epoch {e}" for e in checkpoints) + " | stable from |",
            "|---|---|---|" + "---|" * len(checkpoints) + "---|"]
  for (claim, regime), g in over.groupby(["claim", "regime"], sort=False):
    cells = []
    for e in checkpoints:
      if (regime, e) in acc.index:
        r = acc.loc[(regime, e)]
        cells.append(f"{_fmt(r['mean_diff'], 2)} "
                     + ("(above)" if r["holds"] else "(not above)"))
      else:
        cells.append("-")
    lines.append(f"| ({claim}) | {regime} | *test accuracy - "
                 f"{agg.baseline}* | " + " | ".join(cells) + " | |")
    for layer in [l for l in agg.data.layers if l in set(g["layer"])]:
      gl = g[g["layer"] == layer].set_index("epoch")
      cells = [_short(gl.loc[e, "verdict"]) if e in gl.index else "-"
               for e in checkpoints]
      lines.append(f"| ({claim}) | {regime} | {display_layer(layer)} | "
                   + " | ".join(cells) + " | "
                   + _fmt(stable.get((claim, regime, layer))) + " |")
  lines.append("")
  return lines


def _convergence_lines(agg: Aggregate) -> list[str]:
  conv = agg.convergence
  target = agg.convergence_targets["baseline_final_accuracy"]
  lines = ["Per regime, mean over seeds (`>`: some seed never reached the "
           "target, counted as final epoch + 1). The clean labelled loss is "
           "description, not a test of (c).", "",
           f"| regime | epochs to test accuracy {_fmt(target)} (the "
           f"baseline's final) | mean test accuracy over epochs | epochs to "
           "clean labelled loss "
           f"{_fmt(agg.convergence_targets['target_labelled_loss'])} |",
           "|---|---|---|---|"]
  for regime in agg.data.regimes:
    g = conv[conv["regime"] == regime]
    acc = ((">" if g["baseline_final_censored"].any() else "") +
           _fmt(g["epochs_to_baseline_final"].mean()))
    loss = ((">" if g["labelled_loss_censored"].any() else "") +
            _fmt(g["epochs_to_target_labelled_loss"].mean()))
    lines.append(f"| {regime} | {acc} | {_fmt(g['accuracy_auc'].mean(), 4)} "
                 f"| {loss} |")
  lines.append("")
  cp = agg.convergence_paired
  lines += ["Paired differences (regime - reference), mean [95% CI]:", "",
            "| regime - reference | epochs to the baseline's final accuracy "
            "| mean test accuracy over epochs | epochs to target labelled "
            "loss |", "|---|---|---|---|"]
  for (regime, ref), g in cp.groupby(["regime", "reference"], sort=False):
    cells = []
    for q in CONVERGENCE_QUANTITIES:
      r = g[g["quantity"] == q].iloc[0]
      cells.append(_interval({"mean": r.mean_diff, "ci_low": r.ci_low,
                              "ci_high": r.ci_high}))
    lines.append(f"| {regime} - {ref} | " + " | ".join(cells) + " |")
  lines.append("")
  return lines


def _k_lines(agg: Aggregate) -> list[str]:
  pairs = k_pairs(agg.data.regimes)
  lines = ["## (K) More than two mixing points (descriptive)", ""]
  if not pairs:
    return lines + ["This study has no K > 2 regime beside its K = 2 "
                    "counterpart.", ""]
  lines += ["Paired differences at the final epoch, interpolation error per "
            "layer, mean [95% CI] (convergence: the table of claim (c)).", "",
            "| layer | " + " | ".join(f"{a} - {b}" for a, b in pairs) + " |",
            "|---|" + "---|" * len(pairs)]
  lin = agg.data.linearity
  final = lin[(lin["epoch"] == agg.data.final_epoch) &
              (lin["metric"] == claims_lib.PRIMARY_METRIC)]
  for layer in agg.data.layers:
    if layer in agg.excluded:
      continue
    cells = []
    for a, b in pairs:
      va = _values(final[(final["regime"] == a) & (final["layer"] == layer)],
                   agg.data.seeds)
      vb = _values(final[(final["regime"] == b) & (final["layer"] == layer)],
                   agg.data.seeds)
      cells.append(_interval(stats.paired_difference(va, vb)))
    lines.append(f"| {display_layer(layer)} | " + " | ".join(cells) + " |")
  lines.append("")
  return lines


def _jsonable(x):
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def write_claims(agg: Aggregate, title: str | None = None) -> list[str]:
  title = title or os.path.basename(os.path.normpath(agg.data.out))
  md = os.path.join(agg.data.out, "claims.md")
  with open(md, "w") as f:
    f.write(claims_markdown(agg, title))
  js = os.path.join(agg.data.out, "claims.json")
  with open(js, "w") as f:
    json.dump(_jsonable({
        "baseline": agg.baseline, "regimes": agg.data.regimes,
        "seeds": agg.data.seeds, "final_epoch": agg.data.final_epoch,
        "excluded_layers": agg.excluded,
        "convergence_targets": agg.convergence_targets,
        "precondition": agg.precondition,
        "verdicts": agg.verdicts,
        "over_training": {
            "checkpoints": claims_lib.training_checkpoints(
                agg.data.final_epoch),
            "stability": agg.stability.to_dict("records"),
            "verdicts": agg.over_training[agg.over_training["epoch"].isin(
                claims_lib.training_checkpoints(agg.data.final_epoch))
                                          ].to_dict("records")
                        if not agg.over_training.empty else []}}),
              f, indent=1, allow_nan=False)
  return [md, js]


def write_all(agg: Aggregate) -> list[str]:
  from mixlin_jax.analysis import study_figures  # pylint: disable=import-outside-toplevel
  paths = write_tables(agg) + write_claims(agg)
  paths += study_figures.write_figures(agg, os.path.join(agg.data.out,
                                                         "figures"))
  return paths


def aggregate_and_report(out: str, baseline: str | None = None,
                         regimes: Sequence[str] | None = None,
                         seeds: Sequence[int] | None = None,
                         print_fn=print) -> Aggregate:
  """:func:`aggregate`, write everything, print the verdicts and what is missing."""
  agg = aggregate(out, baseline, regimes, seeds)
  missing = [st for st in agg.data.statuses if not st.finished]
  for st in missing:
    print_fn(f"not aggregated: {st.spec.name} ({st.state})")
  paths = write_all(agg)
  print_fn(f"aggregated {len(agg.data.statuses) - len(missing)} finished runs "
           f"of {out} (regimes {', '.join(agg.data.regimes)}; seeds "
           f"{', '.join(map(str, agg.data.seeds))}); wrote {len(paths)} files")
  for v in agg.verdicts:
    print_fn(f"  claim ({v['claim']}) {v['regime']} vs {v['baseline']}: "
             f"{v['verdict']}")
  print_fn(f"  see {os.path.join(out, 'claims.md')}")
  return agg
