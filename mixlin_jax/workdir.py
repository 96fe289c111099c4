"""The workdir's plain files: the resolved config and the per-epoch metrics log.

    <workdir>/config.json     resolved config + library versions (+ the
                              changes allowed by --allow_config_change)
    <workdir>/metrics.jsonl   one JSON record per completed epoch
    <workdir>/checkpoints/    Orbax (see mixlin_jax.checkpoints)

Only process 0 writes these files.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import tempfile
import time
from importlib import metadata

import jax
import ml_collections

from mixlin_jax import config as config_lib

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
_VERSIONED = ("mixlin_jax", "jax", "jaxlib", "flax", "optax",
              "orbax-checkpoint", "ml-collections", "tensorflow-datasets",
              "numpy")


class WorkdirMismatchError(RuntimeError):
  """The workdir holds a different experiment."""


class NotAWorkdirError(WorkdirMismatchError):
  """The folder holds other files and no run: a typo must not scatter a run."""


# What a run (or a batch job around it) puts in its workdir; a folder that
# holds anything else and no config.json is not a workdir.
_RUN_ENTRIES = frozenset({CONFIG_FILE, METRICS_FILE, "checkpoints",
                          "broken_checkpoints", "analysis"})
# Logs a batch job writes next to the run (`> workdir/log.txt 2>&1`; the
# study runner's log.txt), made before run.py starts.
_LOG_SUFFIXES = (".log", ".out", ".err", "log.txt")


def library_versions() -> dict:
  out = {"python": sys.version.split()[0], "platform": platform.platform()}
  for name in _VERSIONED:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def read_config(workdir: str) -> dict | None:
  """The flat config recorded in ``workdir``, or None if there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)["config"]


def check(workdir: str, config: ml_collections.ConfigDict, *,
          allow_config_change: bool = False) -> None:
  """Raises unless ``workdir`` may run ``config``; reads only, writes nothing.

  Allowed: a new or empty folder, a folder that holds only a batch job's
  log files, a workdir of the same experiment (a field outside
  ``config.RESULT_NEUTRAL_FIELDS`` differs: refused, unless
  ``allow_config_change``), and a workdir with no completed epoch (a run
  that failed or diverged before saving anything: its recorded config
  does not bind the retry).

  Raises:
    NotAWorkdirError: the folder holds other files and no run.
    WorkdirMismatchError: a different experiment, or an unreadable
      config.json (unless ``allow_config_change``).
  """
  _plan(workdir, config, allow_config_change=allow_config_change)


def prepare(workdir: str, config: ml_collections.ConfigDict, *,
            allow_config_change: bool = False) -> None:
  """Creates ``workdir`` and records the config, refusing a different one.

  The checks of :func:`check`, then the writes. With
  ``allow_config_change`` the new config is recorded and the change is
  logged and kept in ``config.json``'s ``config_changes``. A resume under
  other library versions is allowed with a warning (results may then
  differ from an uninterrupted run).

  Raises:
    NotAWorkdirError, WorkdirMismatchError: as :func:`check`.
  """
  changes = _plan(workdir, config, allow_config_change=allow_config_change,
                  report=True)
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  _remove_stale_temporaries(workdir)
  record = {"config": config_lib.flatten(config),
            "versions": library_versions()}
  if changes:
    record["config_changes"] = changes
  _atomic_write_json(os.path.join(workdir, CONFIG_FILE), record)


def _plan(workdir: str, config: ml_collections.ConfigDict, *,
          allow_config_change: bool, report: bool = False) -> list[dict]:
  """The checks of :func:`check`; returns the config changes to record.

  ``report`` logs what :func:`prepare` is about to do (once, not on every
  check).
  """
  new = config_lib.flatten(config)
  path = os.path.join(workdir, CONFIG_FILE)
  _refuse_foreign_folder(workdir)
  started = has_completed_epoch(workdir)
  try:
    recorded = _read_json(path)
  except (OSError, ValueError) as e:
    if started and not allow_config_change:
      raise WorkdirMismatchError(
          f"{path} is unreadable ({type(e).__name__}: {e}), so this workdir "
          "cannot be checked to hold the same experiment. Restore the file, "
          "use another --workdir, or pass --allow_config_change to record "
          "the current config over it.") from e
    if report:
      log.warning("%s is unreadable (%s); overwriting it%s.", path, e,
                  " (--allow_config_change)" if started else
                  " (no epoch was completed)")
    recorded = None
  old = recorded.get("config") if isinstance(recorded, dict) else None
  changes = list(recorded.get("config_changes", [])) if isinstance(
      recorded, dict) else []
  if old is not None:
    diffs = config_lib.result_differences(old, new)
    if diffs and not started:
      # Nothing was computed under the old config (e.g. it diverged in the
      # first epoch): the retry simply replaces it.
      if report:
        log.info("%s holds no completed epoch; recording the new config "
                 "(%s).", workdir, "; ".join(diffs))
      return []
    if diffs and not allow_config_change:
      raise WorkdirMismatchError(
          f"{workdir} holds a different experiment; these fields differ "
          "(recorded -> requested):\n  " + "\n  ".join(diffs) +
          "\nUse another --workdir, or pass --allow_config_change to "
          "continue with the new values (see docs/troubleshooting.md, \"Extending a run\").")
    if diffs and report:
      log.warning("Continuing %s with a changed config "
                  "(--allow_config_change): %s", workdir, "; ".join(diffs))
      changes.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "differences": diffs})
    if report:
      _warn_on_version_change(workdir, recorded.get("versions") or {})
  elif report and started:
    log.warning("%s holds checkpoints but no %s: cannot check that they "
                "belong to this experiment.", workdir, CONFIG_FILE)
  return changes


def has_completed_epoch(workdir: str) -> bool:
  """Whether ``workdir`` holds a record or a checkpoint of a finished epoch."""
  if read_metrics(workdir):
    return True
  folder = os.path.join(workdir, "checkpoints")
  try:
    return any(name.isdigit() for name in os.listdir(folder))
  except OSError:
    return False


def _refuse_foreign_folder(workdir: str) -> None:
  if not os.path.isdir(workdir) or os.path.exists(
      os.path.join(workdir, CONFIG_FILE)):
    return
  foreign = sorted(
      name for name in os.listdir(workdir)
      if name not in _RUN_ENTRIES and not name.startswith(_TMP_PREFIX)
      and not name.endswith(_LOG_SUFFIXES))
  if foreign:
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more"
                                      if len(foreign) > 5 else "")
    raise NotAWorkdirError(
        f"{workdir} is not empty and holds no run ({shown}); a run writes "
        "only into a new or empty folder, or a workdir of an earlier run. "
        "Check --workdir, or give a new folder.")


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _warn_on_version_change(workdir: str, old: dict) -> None:
  now = library_versions()
  changed = [f"{k} {old.get(k)} -> {now.get(k)}" for k in ("python",) +
             _VERSIONED if k in old and old.get(k) != now.get(k)]
  if changed:
    log.warning("Resuming %s under other library versions (%s): the result "
                "may differ from an uninterrupted run.", workdir,
                ", ".join(changed))


_TMP_PREFIX = ".mixlin-"
_TMP_SUFFIX = ".tmp"


def _remove_stale_temporaries(workdir: str) -> None:
  """Deletes half-written temporaries of a killed run (ours only)."""
  for name in os.listdir(workdir):
    if name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX):
      try:
        os.remove(os.path.join(workdir, name))
      except OSError:
        pass


def _atomic_write_json(path: str, obj) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=_TMP_PREFIX,
                             suffix=_TMP_SUFFIX)
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _metrics_lines(workdir: str):
  """``(line number, record or None)`` per non-blank line of
  ``metrics.jsonl``; None for a line that is not JSON."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      try:
        yield number, json.loads(line)
      except json.JSONDecodeError:
        yield number, None


def read_metrics(workdir: str) -> list[dict]:
  """Records of ``metrics.jsonl``; a torn last line (a kill mid-write) is
  skipped (:func:`torn_metrics_lines` names it)."""
  return [r for _, r in _metrics_lines(workdir) if r is not None]


def torn_metrics_lines(workdir: str) -> list[int]:
  """Line numbers (1-based) of ``metrics.jsonl`` that :func:`read_metrics`
  skips because they are not JSON: what a kill during a write leaves at
  the end.  The run's resume rewrites the log without them
  (:meth:`MetricsLog.truncate`) and redoes that epoch."""
  return [n for n, r in _metrics_lines(workdir) if r is None]


class MetricsLog:
  """Append-only JSON lines, kept consistent with the checkpoints on resume."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.workdir = workdir

  def truncate(self, epoch: int) -> list[dict]:
    """Keeps records of epochs ``<= epoch`` (those a checkpoint backs).

    Records past the restored checkpoint came from work that is about to be
    redone; dropping them keeps exactly one record per epoch.
    """
    kept = [r for r in read_metrics(self.workdir) if r.get("epoch", 0) <= epoch]
    missing = sorted(set(range(1, epoch + 1)) - {r.get("epoch") for r in kept})
    if missing:
      log.warning("%s has no record of epoch(s) %s, which the checkpoints "
                  "cover; the log will lack them.", self.path,
                  ", ".join(map(str, missing)))
    if jax.process_index() == 0:
      fd, tmp = tempfile.mkstemp(dir=self.workdir, prefix=_TMP_PREFIX,
                                 suffix=_TMP_SUFFIX)
      with os.fdopen(fd, "w") as f:
        for r in kept:
          f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, self.path)
    return kept

  def append(self, record: dict) -> None:
    if jax.process_index() != 0:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
