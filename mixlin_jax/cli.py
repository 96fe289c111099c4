"""Plumbing shared by the ``experiments/*.py`` entry points (and nothing else).

One convention for every entry point, so that a batch job can rely on it:

* exit status 0: done; 2: a known user error (a bad flag or config value, a
  config file that does not load, missing or malformed data, a workdir of
  another experiment, a diverged run, a workdir with nothing to analyse),
  reported as one line starting ``error:`` on stderr, never a traceback;
  130: interrupted (Ctrl-C), reported as one line saying how to resume;
* ``--help`` prints the help and exits 0;
* output meant for people: plain lines (``warning: ...`` for warnings), not
  absl's timestamped log prefixes, which ``--verbosity`` (or ``--log_dir``,
  for a log file) brings back.

The libraries stay usable from a notebook: they raise exceptions, and only
this module turns them into exit statuses.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
from typing import Callable, Sequence

from absl import flags
from absl import logging as absl_logging

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

_HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?",
               "--helpfull", "-helpfull")


class UsageError(ValueError):
  """A command line that cannot be run: a bad flag value, a missing argument."""


def _user_error_types() -> tuple[type, ...]:
  # Imported here so that importing this module stays cheap.
  # pylint: disable-next=import-outside-toplevel
  from mixlin_jax import checkpoints, config, data, jax_cache, studies, train, workdir
  from mixlin_jax.analysis import errors as analysis_errors  # pylint: disable=import-outside-toplevel
  return (UsageError, config.ConfigError, data.DataError,
          workdir.WorkdirMismatchError, train.NonFiniteError,
          checkpoints.CheckpointError, studies.StudyRunError,
          analysis_errors.AnalysisError, jax_cache.CacheSettingError)


def exit_with_error(message: str, status: int = USER_ERROR_EXIT) -> None:
  """Prints ``error: <message>`` on stderr and exits with ``status``."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


@contextlib.contextmanager
def user_errors_reported():
  """Known user errors -> one ``error:`` line and status 2; Ctrl-C -> 130.

  A ``KeyboardInterrupt`` that says how to resume
  (``train.TrainingInterrupted``) is printed as it is; any other prints
  ``interrupted``.
  """
  try:
    yield
  except KeyboardInterrupt as e:
    print(str(e) or "interrupted", file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED_EXIT)
  except UsageError as e:  # before the imports of the clause below
    exit_with_error(str(e))
  except _user_error_types() as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_EXIT)


# -- flags --------------------------------------------------------------------
def flags_parser(*, config_flag: str | None = None,
                 epilog: str = "") -> Callable[[list[str]], list[str]]:
  """A ``flags_parser`` for ``absl.app.run`` that follows this module's rules.

  Args:
    config_flag: name of an ``ml_collections`` config-file flag, whose file
      is checked first so that a missing or broken file gets one clear line.
    epilog: printed at the end of ``--help``.
  """
  return functools.partial(parse_flags, config_flag=config_flag,
                           epilog=epilog)


def parse_flags(argv: Sequence[str], *, config_flag: str | None = None,
                epilog: str = "") -> list[str]:
  """Parses ``argv`` into absl's FLAGS; help exits 0, any error exits 2."""
  argv = list(argv)
  if any(arg in _HELP_FLAGS for arg in argv[1:]):
    print_help(full=any("helpfull" in arg for arg in argv[1:]), epilog=epilog)
    sys.exit(0)
  # Not at the top, so that importing this module stays cheap.
  # pylint: disable-next=import-outside-toplevel
  from mixlin_jax import config as config_lib
  try:
    if config_flag is not None:
      spec = _flag_argument(argv, config_flag)
      if spec is not None:
        config_lib.load_config_file(spec)
    return flags.FLAGS(argv)
  except config_lib.ConfigError as e:
    exit_with_error(str(e))
  except flags.Error as e:
    exit_with_error(_flag_error_message(e))
  except (AttributeError, KeyError) as e:
    # ml_collections' answer to an override of a field the (already loaded
    # and checked) config file does not have.
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    detail = " ".join(str(e.args[0] if e.args else e).split())
    exit_with_error("a --config override names a field that does not exist: "
                    f"{detail}")
  raise AssertionError("unreachable")


def _flag_argument(argv: Sequence[str], name: str) -> str | None:
  """The value given to ``--name`` in ``argv`` (last one wins), or None."""
  value = None
  for i, arg in enumerate(argv[1:], start=1):
    if arg == "--":
      break
    for prefix in (f"--{name}", f"-{name}"):
      if arg.startswith(prefix + "="):
        value = arg[len(prefix) + 1:]
      elif arg == prefix and i + 1 < len(argv):
        value = argv[i + 1]
  return value


def _flag_error_message(error: flags.Error) -> str:
  message = " ".join(str(error).split())
  required = re.search(r"Flag --(\S+) must have a value other than None",
                       message)
  if required:
    return f"--{required.group(1)} is required (see --help)"
  return message


def print_help(*, full: bool = False, epilog: str = "") -> None:
  """The main module's docstring, its flags (all if ``full``), ``epilog``."""
  main = sys.modules.get("__main__")
  doc = (getattr(main, "__doc__", None) or "").strip()
  if doc:
    print(doc + "\n")
  if full:
    print(flags.FLAGS.get_help())
  else:
    print("Flags:\n" + flags.FLAGS.main_module_help())
  print("\nTry --helpfull for the flags of every module (e.g. --verbosity).")
  if epilog:
    print("\n" + epilog.strip())


def reject_extra_arguments(argv: Sequence[str]) -> None:
  """Raises UsageError if ``argv`` holds more than the program's name."""
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments: {' '.join(argv[1:])} (flags are "
                     "written --name=value; see --help)")


def parse_int_list(name: str, values: Sequence[str] | None) -> list[int] | None:
  """``['1', '5']`` -> ``[1, 5]`` for the list flag ``--name``."""
  if values is None:
    return None
  try:
    return [int(v) for v in values]
  except ValueError:
    raise UsageError(f"--{name} must be comma-separated integers, got "
                     f"{','.join(values)}") from None


def apply_compilation_cache_flag(wanted: bool) -> None:
  """``--nocompilation_cache``: switches the cache off for this process and
  the runs it starts (through the environment; see mixlin_jax.jax_cache)."""
  if not wanted:
    from mixlin_jax import jax_cache  # pylint: disable=import-outside-toplevel
    os.environ[jax_cache.ENV_SWITCH] = "off"


def progress_bar_wanted(flag_value: bool) -> bool:
  """A bar only for a person watching: ``--progress`` and stderr a terminal.

  A bar's carriage-return frames would fill a redirected log (``> log
  2>&1``, Slurm, nohup) with noise; the one line per epoch is printed
  either way.
  """
  return bool(flag_value) and sys.stderr.isatty()


# -- logging ------------------------------------------------------------------
class HumanFormatter(logging.Formatter):
  """``message`` for INFO, ``warning: message`` for warnings, ``error: ...``."""

  def format(self, record: logging.LogRecord) -> str:
    message = super().format(record)
    if record.levelno >= logging.ERROR:
      return "error: " + message
    if record.levelno >= logging.WARNING:
      return "warning: " + message
    return message


def setup_logging() -> None:
  """Plain lines for people on stderr; absl's detailed format on request.

  By default our own notes (logger ``mixlin_jax``) show from INFO and the
  libraries' from WARNING, as plain lines. ``--verbosity`` (``-v``) keeps
  absl's levels and its detailed format (time, thread, file:line) on
  stderr; ``--log_dir`` writes that detailed log to files there (absl's
  names), while stderr keeps the plain lines.
  """
  detailed = bool(flags.FLAGS["verbosity"].present)
  if not detailed:
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("mixlin_jax").setLevel(logging.INFO)
  handler = absl_logging.get_absl_handler()
  root = logging.getLogger()
  if flags.FLAGS["log_dir"].value:
    os.makedirs(flags.FLAGS["log_dir"].value, exist_ok=True)
    handler.use_absl_log_file()
    if handler not in root.handlers:
      root.addHandler(handler)
    human = logging.StreamHandler(sys.stderr)
    human.setFormatter(HumanFormatter())
    root.addHandler(human)
  elif not detailed:
    if handler in root.handlers:
      handler.setFormatter(HumanFormatter())
    else:  # outside absl.app.run
      human = logging.StreamHandler(sys.stderr)
      human.setFormatter(HumanFormatter())
      root.addHandler(human)


def default_workdir(config_arg: str) -> str:
  """``configs/cifar10_mix3.py:smoke`` -> ``workdirs/cifar10_mix3_smoke``."""
  path, _, variant = config_arg.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if variant:
    name += "_" + variant.replace(",", "_")
  return os.path.join("workdirs", name)
