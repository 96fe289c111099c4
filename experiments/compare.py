r"""Overlays several runs: linearity per layer, final-epoch profiles, curves, convergence.

    python experiments/compare.py workdirs/default_erm workdirs/default \
        --names=erm,mix3 --out=workdirs/compare_default
    python experiments/compare.py workdirs/c10_{erm,supmix2,mix2,mix3} \
        --target_accuracy=0.85

Reads each workdir's metrics.jsonl (the linearity logged during training, no
recompute) and, where present, <workdir>/analysis/linearity.json written by
experiments/analyze.py. Writes figures, the merged tables and convergence.csv
into --out (default: <common parent of the workdirs>/comparison) and prints
the convergence table.

Thin on purpose: all logic is in ``mixlin_jax.analysis``.
"""

import os

from absl import app
from absl import flags

from mixlin_jax import cli

_OUT = flags.DEFINE_string(
    "out", None,
    "Output folder (default: <common parent of the workdirs>/comparison).")
_NAMES = flags.DEFINE_list(
    "names", None, "Run names, one per workdir (default: folder names).")
_TARGET_ACCURACY = flags.DEFINE_float(
    "target_accuracy", None,
    "Test accuracy to reach (default: --fraction x best final accuracy).")
_TARGET_LOSS = flags.DEFINE_float(
    "target_loss", None,
    "Train loss to reach (default: lowest final loss / --fraction).")
_FRACTION = flags.DEFINE_float(
    "fraction", 0.9, "Sets the default targets (see above).")
_ACCURACY_KEY = flags.DEFINE_string(
    "accuracy_key", "test.student_accuracy",
    "Accuracy column (test.student_accuracy or test.teacher_accuracy).")
_METRICS = flags.DEFINE_list(
    "metrics", None,
    "Linearity metrics to overlay (default: all of interp_error, "
    "relative_error, tangent_residual).")
_LOSS_KEY = flags.DEFINE_string(
    "loss_key", None,
    "Loss column (default labelled.student_loss, the clean labelled loss "
    "comparable across regimes; or train.supervised, test.student_loss, ...).")


def _default_out(workdirs):
  parents = [os.path.dirname(os.path.abspath(w.rstrip("/"))) for w in workdirs]
  common = os.path.commonpath(parents)
  if common in ("/", os.path.abspath(os.sep)):
    return "comparison"
  return os.path.join(common, "comparison")


def main(argv):
  cli.setup_logging()
  with cli.user_errors_reported():
    workdirs = argv[1:]
    if not workdirs:
      raise cli.UsageError("give one or more workdirs to compare, e.g. "
                           "compare.py workdirs/a workdirs/b (see --help)")
    from mixlin_jax import analysis  # pylint: disable=import-outside-toplevel
    out = _OUT.value or _default_out(workdirs)
    result = analysis.compare_runs(
        workdirs, out, names=_NAMES.value,
        target_accuracy=_TARGET_ACCURACY.value,
        target_loss=_TARGET_LOSS.value, fraction=_FRACTION.value,
        accuracy_key=_ACCURACY_KEY.value, loss_key=_LOSS_KEY.value,
        metrics=_METRICS.value or analysis.METRICS)
  rows = result["convergence_rows"]
  print(f"Convergence ({rows[0]['accuracy_key']} >= "
        f"{_fmt(rows[0]['target_accuracy'])}, {rows[0]['loss_key']} <= "
        f"{_fmt(rows[0]['target_loss'])}; '-' = not reached):")
  print(analysis.format_table(rows, [
      "run", "final_epoch", "final_accuracy", "best_accuracy",
      "epochs_to_target_accuracy", "final_loss", "epochs_to_target_loss"]))
  print(f"Wrote into {out}:")
  for path in result["figures"] + list(result["tables"]) + [
      result["convergence"]]:
    print(f"  {path}")


def _fmt(v):
  return "-" if v is None else f"{v:.4g}"


_EPILOG = """\
Exit status: 0 done; 2 an error (one line starting 'error:' on stderr).
"""


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(epilog=_EPILOG))
