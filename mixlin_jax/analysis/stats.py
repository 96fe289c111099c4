"""Statistics across seeds: means with Student-t intervals, paired differences.

Two different uncertainties, never mixed up:

* **Across seeds** (what a verdict rests on): each run contributes one
  number (e.g. its final-epoch interpolation error of a layer, averaged over
  the mixing weights); the mean over seeds gets a 95% Student-t confidence
  interval with ``n - 1`` degrees of freedom (``scipy.stats.t``).  This is
  the run-to-run variation a new seed would show.
* **Within a run** (``tuple_sem``): the standard error of the per-tuple
  mean, reported by the linearity evaluator.  It says how precisely *this*
  network was measured on a finite set of tuples, not how much another
  training seed would differ.  Kept in the tables, labelled as such.

Paired differences.  The study gives every regime the same seeds, and a
seed fixes the labelled split and the initial parameters; the linearity
tuples and weights come from ``linearity.seed``, the same in every run.  So
for seed ``s``, ``regime(s) - baseline(s)`` compares two networks trained
from the same start on the same labels and measured on the same points:
the pairs share their seed-specific variation, and the difference's
interval is computed from the per-seed differences (a one-sample t interval
on them, ``scipy.stats.ttest_1samp``), usually much tighter than comparing
two unpaired means.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95


def mean_interval(values: Sequence[float],
                  confidence: float = CONFIDENCE) -> dict:
  """Mean, sample std and Student-t interval of ``values`` (NaNs dropped).

  ``n = 1`` gives an undefined interval (NaN bounds); ``n >= 2`` values that
  are all equal give a zero-width interval at the mean.
  """
  v = np.asarray([x for x in values if x is not None and math.isfinite(x)],
                 np.float64)
  n = int(v.size)
  out = {"n": n, "mean": math.nan, "std": math.nan, "ci_low": math.nan,
         "ci_high": math.nan}
  if n == 0:
    return out
  out["mean"] = float(v.mean())
  if n < 2:
    return out
  std = float(v.std(ddof=1))
  out["std"] = std
  half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
  out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
  return out


def paired_difference(values: Sequence[float], baseline: Sequence[float],
                      confidence: float = CONFIDENCE) -> dict:
  """``values - baseline`` pair by pair: mean, t interval, two-sided p-value.

  Pairs with a missing or non-finite side are dropped.  ``relative`` is the
  mean difference over the baseline's mean (for reading, not for testing).
  """
  pairs = [(a, b) for a, b in zip(values, baseline)
           if a is not None and b is not None and math.isfinite(a)
           and math.isfinite(b)]
  d = np.asarray([a - b for a, b in pairs], np.float64)
  out = mean_interval(d.tolist(), confidence)
  out["p_value"] = math.nan
  if out["n"] >= 2:
    if out["std"] > 0:
      out["p_value"] = float(scipy_stats.ttest_1samp(d, 0.0).pvalue)
    else:  # every pair differs by the same amount
      out["p_value"] = 0.0 if out["mean"] != 0 else 1.0
  base_mean = float(np.mean([b for _, b in pairs])) if pairs else math.nan
  out["baseline_mean"] = base_mean
  out["relative"] = (out["mean"] / base_mean
                     if pairs and base_mean not in (0.0,) and
                     math.isfinite(base_mean) else math.nan)
  return out


def direction(interval: dict) -> int:
  """+1 if the interval lies above 0, -1 if below, 0 if it covers 0 or is
  undefined (fewer than two pairs)."""
  lo, hi = interval.get("ci_low", math.nan), interval.get("ci_high", math.nan)
  if not (math.isfinite(lo) and math.isfinite(hi)):
    return 0
  if lo > 0:
    return 1
  if hi < 0:
    return -1
  return 0
