"""Plumbing shared by the ``experiments/*.py`` entry points (and nothing else).

Known user errors (a bad config value, a missing or malformed data file, a
workdir of another experiment, a diverged run) end the program with their
one-paragraph message and exit status 2, not a traceback: the message is the
useful part.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

USER_ERROR_EXIT = 2


def _user_error_types() -> tuple[type, ...]:
  # Imported here so that importing this module stays cheap.
  from mixlin_jax import checkpoints, config, data, studies, train, workdir  # pylint: disable=import-outside-toplevel
  from mixlin_jax.analysis import errors as analysis_errors  # pylint: disable=import-outside-toplevel
  return (config.ConfigError, data.DataError, workdir.WorkdirMismatchError,
          train.NonFiniteError, checkpoints.CheckpointError,
          studies.StudyRunError, analysis_errors.AnalysisError)


@contextlib.contextmanager
def user_errors_reported():
  """Turns known user errors into a clean message and exit status 2."""
  try:
    yield
  except _user_error_types() as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_EXIT)


def setup_logging() -> None:
  """Our own progress notes at INFO; the libraries' chatter from WARNING."""
  logging.getLogger().setLevel(logging.WARNING)
  logging.getLogger("mixlin_jax").setLevel(logging.INFO)


def default_workdir(config_arg: str) -> str:
  """``configs/cifar10_mix3.py:smoke`` -> ``workdirs/cifar10_mix3_smoke``."""
  path, _, variant = config_arg.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if variant:
    name += "_" + variant.replace(",", "_")
  return os.path.join("workdirs", name)
