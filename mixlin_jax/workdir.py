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


def prepare(workdir: str, config: ml_collections.ConfigDict, *,
            allow_config_change: bool = False) -> None:
  """Creates ``workdir`` and records the config, refusing a different one.

  A workdir that already holds a run of a different experiment (a field
  outside ``config.RESULT_NEUTRAL_FIELDS`` differs) is refused with the list
  of differences, so a resume never silently continues another experiment.
  With ``allow_config_change`` the new config is recorded and the change is
  logged and kept in ``config.json``'s ``config_changes``. A resume under
  other library versions is allowed with a warning (results may then
  differ from an uninterrupted run).

  Raises:
    WorkdirMismatchError: unless ``allow_config_change``.
  """
  new = config_lib.flatten(config)
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    recorded = _read_json(path)
  except (OSError, ValueError) as e:
    if not allow_config_change:
      raise WorkdirMismatchError(
          f"{path} is unreadable ({type(e).__name__}: {e}), so this workdir "
          "cannot be checked to hold the same experiment. Restore the file, "
          "use another --workdir, or pass --allow_config_change to record "
          "the current config over it.") from e
    log.warning("%s is unreadable (%s); overwriting it "
                "(--allow_config_change).", path, e)
    recorded = None
  old = recorded.get("config") if isinstance(recorded, dict) else None
  changes = list(recorded.get("config_changes", [])) if isinstance(
      recorded, dict) else []
  if old is not None:
    diffs = config_lib.result_differences(old, new)
    if diffs and not allow_config_change:
      raise WorkdirMismatchError(
          f"{workdir} holds a different experiment; these fields differ "
          "(recorded -> requested):\n  " + "\n  ".join(diffs) +
          "\nUse another --workdir, or pass --allow_config_change to "
          "continue with the new values.")
    if diffs:
      log.warning("Continuing %s with a changed config "
                  "(--allow_config_change): %s", workdir, "; ".join(diffs))
      changes.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "differences": diffs})
    _warn_on_version_change(workdir, recorded.get("versions") or {})
  elif os.path.isdir(os.path.join(workdir, "checkpoints")) and os.listdir(
      os.path.join(workdir, "checkpoints")):
    log.warning("%s holds checkpoints but no %s: cannot check that they "
                "belong to this experiment.", workdir, CONFIG_FILE)
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  _remove_stale_temporaries(workdir)
  record = {"config": new, "versions": library_versions()}
  if changes:
    record["config_changes"] = changes
  _atomic_write_json(path, record)


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


def read_metrics(workdir: str) -> list[dict]:
  """Records of ``metrics.jsonl``; a torn last line (a kill mid-write) is skipped."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


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
