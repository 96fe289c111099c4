r"""Trains one experiment, resuming from its workdir if it holds checkpoints.

    python experiments/run.py --config=configs/default.py
    python experiments/run.py --config=configs/cifar100_mix3.py --workdir=workdirs/c100_mix3
    python experiments/run.py --config=configs/cifar10_mix3.py:smoke \
        --config.data.source=/tmp/cifar10.npz --config.train.epochs=3

Thin on purpose: all logic is in ``mixlin_jax.train`` so a notebook cell can
call ``train_and_evaluate(config, workdir)`` directly.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from mixlin_jax import cli
from mixlin_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/default.py[:variant].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Output folder (default: workdirs/<config name>[_<variant>]). A new or "
    "empty folder, or one of an earlier run of this experiment (it resumes).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume into a workdir that was written by a different config.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "yes", "no"],
    "Call jax.distributed.initialize(): 'auto' does when the environment "
    "describes several processes (TPU pods, JAX_COORDINATOR_ADDRESS).")
_PROGRESS = flags.DEFINE_bool(
    "progress", True,
    "Show a progress bar over each epoch's steps when stderr is a terminal "
    "(never in a redirected log). The one line per epoch prints either way.")
_COMPILATION_CACHE = flags.DEFINE_bool(
    "compilation_cache", True,
    "Keep compiled programs in JAX's persistent cache "
    "(~/.cache/mixlin_jax/jax, or $JAX_COMPILATION_CACHE_DIR) so that the "
    "next run skips compiling them; --nocompilation_cache is MIXLIN_JAX_CACHE=off.")
flags.mark_flags_as_required(["config"])

_EPILOG = f"""\
Config variants, after ':' and comma-separated: {config_lib.VARIANTS};
e.g. --config=configs/default.py:smoke,mix2.
Config fields: every field, its default and its meaning is in base_config()
of mixlin_jax/config.py (the configs/*.py files change a few); override any
with --config.SECTION.FIELD=VALUE, e.g. --config.train.epochs=3.
docs/experiments.md lists the configs and regimes.
Prints one line per epoch on stdout. Exit status: 0 done; 2 an error (one
line starting 'error:' on stderr); 130 interrupted (rerun the same command to
resume from the last completed epoch).
"""


def main(argv):
  cli.setup_logging()
  with cli.user_errors_reported():
    cli.reject_extra_arguments(argv)
    cli.apply_compilation_cache_flag(_COMPILATION_CACHE.value)
    from mixlin_jax import parallel  # pylint: disable=import-outside-toplevel
    # Before anything initialises JAX's backends.
    parallel.maybe_initialize_distributed(
        {"auto": None, "yes": True, "no": False}[_DISTRIBUTED.value])
    from mixlin_jax import train  # pylint: disable=import-outside-toplevel
    workdir = _WORKDIR.value or cli.default_workdir(
        config_flags.get_config_filename(flags.FLAGS["config"]))
    records = train.train_and_evaluate(
        _CONFIG.value, workdir, allow_config_change=_ALLOW_CONFIG_CHANGE.value,
        progress=cli.progress_bar_wanted(_PROGRESS.value))
  if records:
    last = records[-1]
    print(f"Done: {len(records)} epochs in {workdir}; final test accuracy "
          f"{last['test']['student_accuracy']:.4f} (EMA teacher "
          f"{last['test']['teacher_accuracy']:.4f}).")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(config_flag="config",
                                              epilog=_EPILOG))
