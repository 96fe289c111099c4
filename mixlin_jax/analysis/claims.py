"""The paper's claims as tests fixed before looking at any data, and their verdicts.

The claims come from the abstract of arXiv 2210.16413 (all a reader can
check us against):

* **(a)** supervised mixup makes the *intermediate* layers *more* non-linear
  than training without mixup;
* **(b)** mixup as an *unsupervised* consistency loss makes *all* layers
  *more* linear than training without it;
* **(c)** unsupervised mixup makes training converge faster.
* **(K)** descriptive, no direction claimed: what more than two mixing
  points does to convergence (mixK vs mix2, supmixK vs supmix2).

How each is tested (written down here, in the README and in every
``claims.md`` before any study was aggregated):

* **Regimes.** (a) every ``supmixK`` regime of the study against the
  baseline (``erm``); (b) and (c) every ``mixK`` regime against it.
* **Quantity.** Linearity: the run's value at its **final epoch**, mean over
  the mixing weights, one number per (run, layer, metric).  Convergence:
  epochs until the student's test accuracy first reaches the *target*, 90%
  of the baseline's mean final test accuracy (a run that never reaches it
  counts as ``epochs + 1``, censored and marked).
* **Statistic.** The paired difference regime - baseline over seeds (same
  seed, same labelled split and initialisation, same linearity tuples; see
  :mod:`mixlin_jax.analysis.stats`), its mean and 95% Student-t interval.
* **Per layer and metric.** *supported* when the interval excludes 0 in the
  claimed direction (a: above 0, the regime less linear; b: below 0; c:
  fewer epochs), *contradicted* when it excludes 0 in the opposite
  direction, *inconclusive* otherwise (including fewer than 2 seeds).
* **Layers.** Every representation the model records, in network order.
  *Intermediate* = all but the last (the logits).  Representations that are
  linear by construction (computed before any non-linearity, e.g. WRN's
  bias-free stem convolution: final interpolation error below ``1e-6`` in
  every run) are excluded from both claims and listed, since no training can
  change them.
* **Primary metric** for the overall verdict: the interpolation error.  The
  relative error and the tangent residual are tested the same way and
  reported beside it, whether they agree or not.
* **Overall verdict** of (a) or (b) for a regime: *supported* when at least
  half of the claim's layers are supported and none contradicted,
  *contradicted* when at least half are contradicted and none supported,
  *mixed* when some layers go each way, else *inconclusive*.  (c) has one
  number per regime, so its verdict is that number's.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

from mixlin_jax.analysis import stats

PRIMARY_METRIC = "interp_error"
LINEAR_BY_CONSTRUCTION = 1e-6
SUPPORTED, CONTRADICTED, INCONCLUSIVE, MIXED = (
    "supported", "contradicted", "inconclusive", "mixed")


@dataclasses.dataclass(frozen=True)
class Claim:
  key: str
  statement: str
  regime_pattern: str  # regex over regime names
  layers: str  # "intermediate" | "all" | "" (not a layer claim)
  direction: int  # sign of (regime - baseline) the claim predicts


CLAIMS = (
    Claim("a", "Supervised mixup makes the intermediate layers more "
          "non-linear than training without mixup.", r"^supmix\d+$",
          "intermediate", +1),
    Claim("b", "Mixup as an unsupervised consistency loss makes all layers "
          "more linear than training without it.", r"^mix\d+$", "all", -1),
    Claim("c", "Unsupervised mixup makes training converge faster (fewer "
          "epochs to the target test accuracy).", r"^mix\d+$", "", -1),
)


def regimes_for(claim: Claim, regimes: Sequence[str]) -> list[str]:
  return [r for r in regimes if re.match(claim.regime_pattern, r)]


def layer_verdict(interval: Mapping, claimed: int) -> str:
  d = stats.direction(interval)
  if d == 0:
    return INCONCLUSIVE
  return SUPPORTED if d == claimed else CONTRADICTED


def overall_verdict(verdicts: Sequence[str]) -> str:
  """Combines per-layer verdicts (see the module docstring)."""
  n = len(verdicts)
  sup = sum(v == SUPPORTED for v in verdicts)
  con = sum(v == CONTRADICTED for v in verdicts)
  if n == 0:
    return INCONCLUSIVE
  if sup and con:
    return MIXED
  if sup * 2 >= n:
    return SUPPORTED
  if con * 2 >= n:
    return CONTRADICTED
  return INCONCLUSIVE


def claim_layers(claim: Claim, layers: Sequence[str],
                 excluded: Sequence[str]) -> list[str]:
  """The layers a claim speaks of, in network order (see module docstring)."""
  kept = [l for l in layers if l not in set(excluded)]
  if claim.layers == "intermediate":
    return [l for l in kept if l != layers[-1]]
  return kept


def evaluate(claims: Sequence[Claim], regimes: Sequence[str], baseline: str,
             layers: Sequence[str], excluded: Sequence[str],
             metrics: Sequence[str], linearity_diff: Mapping,
             convergence_diff: Mapping) -> list[dict]:
  """Verdicts for every claim, regime, metric and layer.

  Args:
    linearity_diff: ``{(regime, layer, metric): paired_difference dict}`` at
      the final epoch.
    convergence_diff: ``{regime: paired_difference dict}`` of epochs to the
      target accuracy.

  Returns:
    One dict per (claim, regime): ``claim, statement, regime, baseline,
    verdict`` (primary metric) and ``metrics``: ``{metric: {"verdict",
    "layers": [{"layer", "verdict", **interval}]}}`` or, for (c),
    ``interval``.
  """
  out = []
  for claim in claims:
    for regime in regimes_for(claim, regimes):
      if regime == baseline:
        continue
      entry = {"claim": claim.key, "statement": claim.statement,
               "regime": regime, "baseline": baseline,
               "direction": claim.direction}
      if not claim.layers:
        interval = convergence_diff.get(regime, stats.mean_interval([]))
        entry["interval"] = interval
        entry["verdict"] = layer_verdict(interval, claim.direction)
        out.append(entry)
        continue
      chosen = claim_layers(claim, layers, excluded)
      entry["layers"] = chosen
      entry["metrics"] = {}
      for metric in metrics:
        rows = []
        for layer in chosen:
          interval = linearity_diff.get((regime, layer, metric),
                                        stats.mean_interval([]))
          rows.append({"layer": layer,
                       "verdict": layer_verdict(interval, claim.direction),
                       **interval})
        entry["metrics"][metric] = {
            "verdict": overall_verdict([r["verdict"] for r in rows]),
            "layers": rows}
      primary = entry["metrics"].get(PRIMARY_METRIC)
      entry["verdict"] = primary["verdict"] if primary else INCONCLUSIVE
      out.append(entry)
  return out
