"""A pilot's table: which setting of a study makes unsupervised mixup work?

A *pilot* is a few small studies of the same config under different
settings (schedule, consistency weight, labels, ...), each an ordinary study
folder (``<folder>/runs/<regime>_seed<seed>/``).  Before a study tests the
paper's claims, its setting is chosen by a pilot where the claims'
precondition can hold (see :mod:`mixlin_jax.analysis.claims`): this module
tabulates, per pilot folder, the config fields that differ between the
folders, the final test accuracy of every regime and the precondition's
paired difference mixK - baseline, from the runs' ``config.json`` and
``metrics.jsonl`` alone.
"""

from __future__ import annotations

import os
from typing import Sequence

from mixlin_jax import workdir as workdir_lib
from mixlin_jax.analysis import results
from mixlin_jax.analysis import study as study_lib
from mixlin_jax.analysis.errors import AnalysisError

# Fields that always differ between runs of one study, or say nothing about
# the setting.
_IGNORED = ("seed", "mixup.mode", "mixup.num_points", "data.data_dir",
            "data.source")


def _fmt(x, digits=3):
  return "-" if x is None or x != x else f"{x:.{digits}g}"


def setting_fields(configs: Sequence[dict]) -> list[str]:
  """The config fields whose value differs between the pilot folders."""
  keys = sorted({k for c in configs for k in c} - set(_IGNORED))
  return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def piloted_config(agg: study_lib.Aggregate) -> dict:
  """The config of the setting a pilot folder tries: that of its first
  finished non-baseline run.  (The baseline's student does not depend on
  the consistency fields, so pilots that differ only there may share one
  baseline run; its config then shows another pilot's values.)"""
  for st in agg.data.statuses:
    if st.finished and st.spec.regime != agg.baseline:
      return workdir_lib.read_config(st.workdir)
  return agg.data.config


def pilot_rows(folders: Sequence[str], baseline: str = "erm") -> list[dict]:
  """One dict per folder: its setting, accuracies and precondition."""
  if not folders:
    raise AnalysisError("no pilot folder given")
  aggs = [study_lib.aggregate(f, baseline=baseline) for f in folders]
  configs = [piloted_config(a) for a in aggs]
  fields = setting_fields(configs)
  rows = []
  for folder, agg, config in zip(folders, aggs, configs):
    acc = {r.regime: (r.test_accuracy_mean, r.test_accuracy_std, r.n_seeds)
           for r in agg.accuracy.itertuples()}
    rows.append({
        "pilot": os.path.basename(os.path.normpath(folder)),
        "setting": {f: config.get(f) for f in fields},
        "seeds": agg.data.seeds, "accuracy": acc,
        "precondition": agg.precondition,
        "epochs": agg.data.final_epoch,
        "compute_minutes": 60 * results.logged_hours(agg)})
  return rows


def pilot_markdown(rows: Sequence[dict], baseline: str = "erm") -> str:
  """The pilot table, one row per folder."""
  fields = list(rows[0]["setting"]) if rows else []
  regimes = []
  for r in rows:
    regimes += [k for k in r["accuracy"] if k not in regimes]
  mixed = [p["regime"] for p in rows[0]["precondition"]] if rows else []
  head = (["pilot"] + fields + ["seeds"] +
          [f"{g} test acc." for g in regimes] +
          [f"{g} - {baseline} [95% CI]" for g in mixed] +
          ["logged compute, min"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    pre = {p["regime"]: p for p in r["precondition"]}
    cells = [r["pilot"]] + [str(r["setting"][f]) for f in fields]
    cells.append(",".join(map(str, r["seeds"])))
    for g in regimes:
      m = r["accuracy"].get(g)
      cells.append("-" if m is None else f"{_fmt(m[0], 4)} +- {_fmt(m[1], 2)}")
    for g in mixed:
      p = pre.get(g)
      if p is None:
        cells.append("-")
        continue
      mark = (" **holds**" if p["holds"] else "") if p["applies"] else ""
      cells.append(f"{_fmt(p['mean'], 2)} [{_fmt(p['ci_low'], 2)}, "
                   f"{_fmt(p['ci_high'], 2)}]{mark}")
    cells.append(f"{r['compute_minutes']:.0f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
