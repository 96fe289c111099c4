r"""Trains one experiment, resuming from its workdir if it holds checkpoints.

    python experiments/run.py --config=configs/default.py
    python experiments/run.py --config=configs/cifar100_mix3.py --workdir=workdirs/c100_mix3
    python experiments/run.py --config=configs/cifar10_mix3.py:smoke \
        --config.data.source=/tmp/cifar10.npz --config.train.epochs=3

Thin on purpose: all logic is in ``mixlin_jax.train`` so a notebook cell can
call ``train_and_evaluate(config, workdir)`` directly.
"""

import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

# Allow `python experiments/run.py` from a checkout without installing.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/default.py[:variant].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Output folder (default: workdirs/<config name>[_<variant>]).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume into a workdir that was written by a different config.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "yes", "no"],
    "Call jax.distributed.initialize(): 'auto' does when the environment "
    "describes several processes (TPU pods, JAX_COORDINATOR_ADDRESS).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  from mixlin_jax import parallel  # pylint: disable=import-outside-toplevel
  parallel.maybe_initialize_distributed(
      {"auto": None, "yes": True, "no": False}[_DISTRIBUTED.value])
  from mixlin_jax import cli, train  # pylint: disable=import-outside-toplevel
  # Our own progress notes at INFO; the libraries' (Orbax) chatter only from WARNING.
  logging.getLogger().setLevel(logging.WARNING)
  logging.getLogger("mixlin_jax").setLevel(logging.INFO)
  workdir = _WORKDIR.value or cli.default_workdir(
      config_flags.get_config_filename(flags.FLAGS["config"]))
  with cli.user_errors_reported():
    records = train.train_and_evaluate(
        _CONFIG.value, workdir, allow_config_change=_ALLOW_CONFIG_CHANGE.value,
        progress=_PROGRESS.value)
  if records:
    last = records[-1]
    print(f"Done: {len(records)} epochs in {workdir}; final test accuracy "
          f"{last['test']['student_accuracy']:.4f} (EMA teacher "
          f"{last['test']['teacher_accuracy']:.4f}).")


def _parse_flags(argv):
  """absl's parser, but a misspelt --config.* field is one line and status 2."""
  from mixlin_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    # A config file's own ConfigError (e.g. an unknown ':variant') arrives
    # wrapped by absl; show just its message.
    message = str(e)
    marker = f"{config_lib.ConfigError.__name__}: "
    if marker in message:
      message = message.rsplit(marker, 1)[1]
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    sys.exit(2)
  except (AttributeError, KeyError) as e:  # raised by ml_collections
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    detail = " ".join(str(e.args[0] if e.args else e).split())
    print(f"error: a --config override names a field that does not exist: "
          f"{detail}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
