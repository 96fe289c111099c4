"""The workdir's plain files: the resolved config and the per-epoch metrics log.

    <workdir>/config.json     resolved config + library versions
    <workdir>/metrics.jsonl   one JSON record per completed epoch
    <workdir>/checkpoints/    Orbax (see mixlin_jax.checkpoints)

Only process 0 writes these files.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from importlib import metadata

import jax
import ml_collections

from mixlin_jax import config as config_lib

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

  Raises:
    WorkdirMismatchError: unless ``allow_config_change``.
  """
  new = config_lib.flatten(config)
  old = read_config(workdir)
  if old is not None and not allow_config_change:
    diffs = config_lib.result_differences(old, new)
    if diffs:
      raise WorkdirMismatchError(
          f"{workdir} holds a different experiment; these fields differ "
          "(recorded -> requested):\n  " + "\n  ".join(diffs) +
          "\nUse another --workdir, or pass --allow_config_change to "
          "continue with the new values.")
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  _atomic_write_json(os.path.join(workdir, CONFIG_FILE),
                     {"config": new, "versions": library_versions()})


def _atomic_write_json(path: str, obj) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
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
    if jax.process_index() == 0:
      fd, tmp = tempfile.mkstemp(dir=self.workdir, suffix=".tmp")
      with os.fdopen(fd, "w") as f:
        for r in kept:
          f.write(json.dumps(r) + "\n")
      os.replace(tmp, self.path)
    return kept

  def append(self, record: dict) -> None:
    if jax.process_index() != 0:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
