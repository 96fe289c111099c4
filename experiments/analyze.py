r"""Recomputes a run's layer-wise linearity from its checkpoints; writes a table and figures.

    python experiments/analyze.py --workdir=workdirs/default
    python experiments/analyze.py --workdir=workdirs/default --epochs=1,6,12
    python experiments/analyze.py --workdir=workdirs/c10_mix3 --split=train \
        --num_tuples=2048 --out=workdirs/c10_mix3/analysis_train

Checkpoints are opened read-only and restored on whatever device is present
(a GPU run analyses fine on a laptop CPU). The defaults reproduce the tuples
logged during training; --split/--num_tuples/--num_points change them.
Writes into --out (default <workdir>/analysis): linearity.csv/.json,
heatmaps.png, layer_profiles.png, training_curves.png.

Thin on purpose: all logic is in ``mixlin_jax.analysis``.
"""

from absl import app
from absl import flags

from mixlin_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory to analyse.")
_OUT = flags.DEFINE_string(
    "out", None, "Output folder (default: <workdir>/analysis).")
_SPLIT = flags.DEFINE_enum(
    "split", None, ["test", "train"],
    "Split the tuples are drawn from (default: the recorded linearity.split).")
_NUM_TUPLES = flags.DEFINE_integer(
    "num_tuples", None, "Tuples per epoch (default: recorded).")
_NUM_POINTS = flags.DEFINE_integer(
    "num_points", None, "Points per tuple K (default: recorded).")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Tuples per evaluation step (default: recorded).")
_EPOCHS = flags.DEFINE_list(
    "epochs", None, "Epochs to analyse, e.g. 1,5,10 (default: all saved).")
_PROFILE_EPOCHS = flags.DEFINE_list(
    "profile_epochs", None,
    "Epochs drawn in layer_profiles.png (default: up to 5, evenly spaced).")
_VARIABLES = flags.DEFINE_enum(
    "variables", "student", ["student", "teacher"],
    "Which weights: the student (as logged) or the EMA teacher.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Override data.data_dir (TFDS data on this machine).")
_PROGRESS = flags.DEFINE_bool(
    "progress", True, "Show a progress bar when stderr is a terminal.")
flags.mark_flags_as_required(["workdir"])


_EPILOG = """\
Exit status: 0 done; 2 an error (one line starting 'error:' on stderr),
including a workdir where no requested epoch could be analysed; 130
interrupted. Damaged or missing checkpoints are skipped with a warning.
"""


def main(argv):
  cli.setup_logging()
  with cli.user_errors_reported():
    cli.reject_extra_arguments(argv)
    epochs = cli.parse_int_list("epochs", _EPOCHS.value)
    profile_epochs = cli.parse_int_list("profile_epochs",
                                        _PROFILE_EPOCHS.value)
    from mixlin_jax import analysis  # pylint: disable=import-outside-toplevel
    from mixlin_jax import jax_cache  # pylint: disable=import-outside-toplevel
    jax_cache.enable()
    overrides = {"data.data_dir": _DATA_DIR.value} if _DATA_DIR.value else None
    result = analysis.run_analysis(
        _WORKDIR.value, _OUT.value, split=_SPLIT.value,
        num_tuples=_NUM_TUPLES.value, num_points=_NUM_POINTS.value,
        batch_size=_BATCH_SIZE.value, epochs=epochs,
        variables=_VARIABLES.value, overrides=overrides,
        profile_epochs=profile_epochs,
        progress=cli.progress_bar_wanted(_PROGRESS.value))
  if result["skipped"]:
    print(f"Skipped epochs (see warnings): "
          f"{', '.join(map(str, result['skipped']))}")
  if not result["rows"]:
    cli.exit_with_error(f"nothing analysed in {_WORKDIR.value}: no requested "
                        "epoch has a usable checkpoint (see the warnings "
                        "above)")
  epochs_done = sorted({r["epoch"] for r in result["rows"]})
  print(f"Analysed {len(epochs_done)} epochs ({len(result['rows'])} rows).")
  for path in list(result["table"]) + result["figures"]:
    print(f"  {path}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(epilog=_EPILOG))
