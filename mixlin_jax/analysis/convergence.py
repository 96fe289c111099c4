"""Convergence of runs: epochs to reach a target accuracy or loss."""

from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

from mixlin_jax.analysis.tables import is_finite_number

log = logging.getLogger(__name__)

# The clean labelled cross-entropy (no augmentation, no mixing, inference
# mode), logged every epoch for every regime: the one loss comparable
# across regimes.  Runs logged before it existed fall back to the
# supervised training term.
CLEAN_LOSS_KEY = "labelled.student_loss"
FALLBACK_LOSS_KEY = "train.supervised"


def convergence_table(rows: Sequence[Mapping], *,
                      target_accuracy: float | None = None,
                      target_loss: float | None = None,
                      fraction: float = 0.9,
                      accuracy_key: str = "test.student_accuracy",
                      loss_key: str | None = None) -> list[dict]:
  """Epochs each run needs to reach a test accuracy and a train loss.

  Args:
    rows: :func:`metrics_rows` of one or more runs.
    target_accuracy: default ``fraction`` x the best *final* accuracy among
      the runs (so the best run reaches it by construction).
    target_loss: default the lowest final loss among the runs / ``fraction``.
    accuracy_key, loss_key: columns of :func:`metrics_rows`.  The default
      loss is ``labelled.student_loss``, the clean cross-entropy on the
      labelled images measured the same way for every regime (each
      regime's own training loss is not comparable: supervised mixup's is
      on mixed targets, unsupervised mixup's adds a consistency term).  For
      runs that did not log it, ``train.supervised`` with a warning.

  Returns:
    One row per run: ``run, final_epoch, final_accuracy, best_accuracy,
    best_accuracy_epoch, target_accuracy, epochs_to_target_accuracy,
    final_loss, min_loss, target_loss, epochs_to_target_loss,
    accuracy_key, loss_key``; an ``epochs_to_*`` of None means never
    reached.
  """
  if loss_key is None:
    loss_key = CLEAN_LOSS_KEY
    if not any(CLEAN_LOSS_KEY in r for r in rows):
      loss_key = FALLBACK_LOSS_KEY
      log.warning("these runs did not log %s; the loss column is %s, which "
                  "is not comparable across regimes for supervised mixup.",
                  CLEAN_LOSS_KEY, FALLBACK_LOSS_KEY)
  runs = list(dict.fromkeys(r["run"] for r in rows))
  series = {}
  for run in runs:
    rr = sorted((r for r in rows if r["run"] == run), key=lambda r: r["epoch"])
    series[run] = (
        [r["epoch"] for r in rr],
        [r.get(accuracy_key, math.nan) for r in rr],
        [r.get(loss_key, math.nan) for r in rr])
  finals_acc = [s[1][-1] for s in series.values() if s[0] and is_finite_number(s[1][-1])]
  finals_loss = [s[2][-1] for s in series.values()
                 if s[0] and is_finite_number(s[2][-1])]
  if target_accuracy is None and finals_acc:
    target_accuracy = fraction * max(finals_acc)
  if target_loss is None and finals_loss:
    target_loss = min(finals_loss) / fraction

  def first(epochs, values, ok):
    for e, v in zip(epochs, values):
      if is_finite_number(v) and ok(v):
        return e
    return None

  out = []
  for run, (epochs, acc, loss) in series.items():
    acc_ok = [(e, a) for e, a in zip(epochs, acc) if is_finite_number(a)]
    loss_ok = [v for v in loss if is_finite_number(v)]
    best = max(acc_ok, key=lambda p: p[1]) if acc_ok else (None, None)
    out.append({
        "run": run,
        "final_epoch": epochs[-1] if epochs else None,
        "final_accuracy": acc[-1] if acc else None,
        "best_accuracy": best[1],
        "best_accuracy_epoch": best[0],
        "target_accuracy": target_accuracy,
        "epochs_to_target_accuracy": None if target_accuracy is None else
        first(epochs, acc, lambda v: v >= target_accuracy),
        "final_loss": loss[-1] if loss else None,
        "min_loss": min(loss_ok) if loss_ok else None,
        "target_loss": target_loss,
        "epochs_to_target_loss": None if target_loss is None else
        first(epochs, loss, lambda v: v <= target_loss),
        "accuracy_key": accuracy_key,
        "loss_key": loss_key,
    })
  return out
