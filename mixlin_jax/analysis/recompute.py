"""Recompute linearity from a run's checkpoints, read-only, on any device.

:func:`analyze_workdir` rebuilds a run's config from its ``config.json``
(:func:`config_from_workdir`), reloads every saved epoch *read-only* and
evaluates the linearity metrics with the very
:class:`~mixlin_jax.linearity.LinearityEvaluator` used during training (same
``linearity.seed`` -> same tuples and weights), optionally on another split,
more tuples or another ``K``.  It writes nothing.  The compiled evaluator is
cached per (config, device), so re-analysing a run, or a copy of it, does
not compile again (:func:`clear_cache` frees it).

Cross-device restore.  The state skeleton is built on the analysing machine:
``jax.eval_shape`` of the local :class:`~mixlin_jax.train.Trainer`'s
initialiser (no compute, no parameter allocation) with every leaf given a
replicated sharding over a one-device mesh.  Orbax reads the stored arrays
into that skeleton's shardings, so a checkpoint written by 8 GPUs (or a TPU
slice) restores onto a laptop CPU and vice versa.  Parameters are stored in
float32 whatever the compute dtype, and the linearity evaluator always runs
the float32 eval model, so the recomputed values match the logged ones up to
float reassociation.

The training code is imported lazily (inside the functions that need it):
tables and figures never pay for it.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, Mapping

import ml_collections
import numpy as np

from mixlin_jax import config as config_lib
from mixlin_jax import workdir as workdir_lib
from mixlin_jax.analysis.errors import AnalysisError
from mixlin_jax.analysis.tables import default_run_name, epoch_ranges, linearity_rows

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"


def _set_field(c: ml_collections.ConfigDict, key: str, value: Any) -> bool:
  """Sets dotted ``key`` if it exists in ``c``; False if it does not."""
  *path, leaf = key.split(".")
  node = c
  for part in path:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      return False
    node = node[part]
  if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
    return False
  default = node[leaf]
  if isinstance(default, tuple) and isinstance(value, list):
    value = tuple(value)  # JSON turned the tuple into a list
  elif (isinstance(default, float) and isinstance(value, int) and
        not isinstance(value, bool)):
    value = float(value)
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise config_lib.ConfigError(
        key, value, f"a value of the field's type ({type(default).__name__})"
    ) from e
  return True


def config_from_workdir(workdir: str,
                        overrides: Mapping[str, Any] | None = None
                        ) -> ml_collections.ConfigDict:
  """The config recorded in ``<workdir>/config.json``, as a locked ConfigDict.

  The flat record is poured into :func:`mixlin_jax.config.base_config`'s
  structure (so types and tuples come back as the code expects); fields this
  version does not know are ignored and fields the record lacks keep their
  defaults, both with a warning.  ``overrides`` (dotted keys, e.g.
  ``{"linearity.split": "train", "data.data_dir": "/data"}``) are applied
  last.

  Raises:
    AnalysisError: ``workdir`` has no config.json.
    mixlin_jax.config.ConfigError: an override names an unknown field or has
      the wrong type.
  """
  flat = workdir_lib.read_config(workdir)
  if flat is None:
    raise AnalysisError(
        f"{workdir} has no {workdir_lib.CONFIG_FILE}: not a run directory "
        "written by experiments/run.py.")
  c = config_lib.base_config()
  unknown = [k for k, v in sorted(flat.items()) if not _set_field(c, k, v)]
  if unknown:
    log.warning("%s: recorded fields unknown to this version were ignored: "
                "%s", workdir, ", ".join(unknown))
  missing = sorted(set(config_lib.flatten(config_lib.base_config())) -
                   set(flat))
  if missing:
    log.warning("%s: fields absent from the record keep their defaults: %s",
                workdir, ", ".join(missing))
  for key, value in (overrides or {}).items():
    if not _set_field(c, key, value):
      raise config_lib.ConfigError(
          key, value, "a field of the config (see mixlin_jax.config."
          "base_config)")
  c.lock()
  return c


def state_skeleton(config: ml_collections.ConfigDict, split, mesh) -> Any:
  """Abstract TrainState of the experiment, placed replicated on ``mesh``.

  :func:`mixlin_jax.train.state_template`: shapes and dtypes only, nothing
  is computed or allocated.  Used as the restore target, it decides where
  the restored arrays land (see the module docstring).
  """
  from mixlin_jax import train as train_lib  # pylint: disable=import-outside-toplevel
  return train_lib.state_template(config, split, mesh)


# (flattened config, device) -> (evaluator, skeleton): workdirs of the same
# experiment (copies, re-analyses in a notebook) share one compiled evaluator
# and the device-resident data.  Small: each entry holds a dataset on device.
_EVALUATORS: dict[str, tuple] = {}


_EVALUATOR_CACHE_SIZE = 2


def clear_cache() -> None:
  """Drops the cached evaluators (and the device memory their data holds)."""
  _EVALUATORS.clear()


def _evaluator_for(config: ml_collections.ConfigDict) -> tuple:
  import jax  # pylint: disable=import-outside-toplevel
  from mixlin_jax import parallel  # pylint: disable=import-outside-toplevel
  from mixlin_jax import evaluation  # pylint: disable=import-outside-toplevel
  from mixlin_jax import train as train_lib  # pylint: disable=import-outside-toplevel
  device = jax.local_devices()[0]
  key = json.dumps([config_lib.flatten(config), str(device)], sort_keys=True)
  if key in _EVALUATORS:
    _EVALUATORS[key] = _EVALUATORS.pop(key)  # most recently used last
    return _EVALUATORS[key]
  split_data = train_lib.load_split(config)
  mesh = parallel.make_mesh([device])
  entry = (evaluation.make_linearity_evaluator(
      config, split_data, num_classes=split_data.num_classes, mesh=mesh),
           state_skeleton(config, split_data, mesh))
  while len(_EVALUATORS) >= _EVALUATOR_CACHE_SIZE:
    _EVALUATORS.pop(next(iter(_EVALUATORS)))
  _EVALUATORS[key] = entry
  return entry


class _ReadOnlyCheckpoints:
  """Read-only access to ``<workdir>/checkpoints`` that survives damage.

  Normally one read-only :class:`~mixlin_jax.checkpoints.Checkpoints` over
  the directory.  If that cannot even be opened (a garbled epoch makes the
  manager refuse the whole directory), every epoch folder is opened on its
  own through a private temporary directory holding one symbolic link to
  it, so the damaged epochs are reported and the others still read.
  Nothing is created, moved or written under the checkpoints directory.
  """

  def __init__(self, directory: str):
    from mixlin_jax import checkpoints as ckpt_lib  # pylint: disable=import-outside-toplevel
    self.directory = os.path.abspath(directory)
    self.unreadable: dict[int, str] = {}  # epoch -> reason
    self._views: dict[int, Any] = {}
    self._tmp = None
    self._all = None
    try:
      self._all = ckpt_lib.Checkpoints(self.directory, read_only=True)
    except Exception as e:  # pylint: disable=broad-except
      log.warning("%s cannot be opened as a whole (%s); opening each epoch "
                  "on its own to skip the damaged ones.", self.directory,
                  ckpt_lib.describe_error(e))
      self._open_each(ckpt_lib)

  def _open_each(self, ckpt_lib) -> None:
    import tempfile  # pylint: disable=import-outside-toplevel
    self._tmp = tempfile.mkdtemp(prefix="mixlin_readonly_")
    for name in sorted(os.listdir(self.directory), key=lambda n: (len(n), n)):
      src = os.path.join(self.directory, name)
      if not name.isdigit() or not os.path.isdir(src):
        continue
      view = os.path.join(self._tmp, name)
      os.mkdir(view)
      os.symlink(src, os.path.join(view, name))
      try:
        c = ckpt_lib.Checkpoints(view, read_only=True)
      except Exception as e:  # pylint: disable=broad-except
        reason = ckpt_lib.describe_error(e)
        self.unreadable[int(name)] = reason.replace(
            os.path.join(view, name), src).replace(view, self.directory)
        continue
      if int(name) in c.epochs():
        self._views[int(name)] = c
      else:  # not finalized: same as not listed by the manager
        c.close()

  def epochs(self) -> list[int]:
    return self._all.epochs() if self._all is not None else sorted(
        self._views)

  def restore(self, epoch: int, target: Any):
    if self._all is not None:
      return self._all.restore(epoch, target)
    return self._views[epoch].restore(epoch, target)

  def close(self) -> None:
    for c in ([self._all] if self._all is not None else []) + list(
        self._views.values()):
      c.close()
    if self._tmp is not None:
      import shutil  # pylint: disable=import-outside-toplevel
      for name in os.listdir(self._tmp):  # unlink first: never follow a link
        link = os.path.join(self._tmp, name, name)
        if os.path.islink(link):
          os.unlink(link)
      shutil.rmtree(self._tmp, ignore_errors=True)
      self._tmp = None


def _all_finite(tree) -> bool:
  import jax  # pylint: disable=import-outside-toplevel
  return all(bool(np.all(np.isfinite(np.asarray(x))))
             for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def analyze_workdir(workdir: str, *,
                    split: str | None = None,
                    num_tuples: int | None = None,
                    batch_size: int | None = None,
                    num_points: int | None = None,
                    epochs: Iterable[int] | None = None,
                    variables: str = "student",
                    overrides: Mapping[str, Any] | None = None,
                    run: str | None = None,
                    progress: bool = True) -> list[dict]:
  """Recomputes the linearity metrics of every saved epoch of ``workdir``.

  Checkpoints are opened read-only (nothing under ``workdir`` is created,
  modified or moved) and restored onto the first local device, whatever
  wrote them.  An epoch that is requested but has no finalized checkpoint,
  or whose checkpoint cannot be restored (or restores to non-finite
  parameters, which training never saves), is reported with
  ``logging.warning`` and skipped; the other epochs are still analysed.

  Args:
    workdir: a run directory written by ``experiments/run.py``.
    split, num_tuples, batch_size, num_points: override ``linearity.*``; the
      defaults (None) keep the recorded values, which reproduce the tuples
      and weights logged during training (``linearity.seed`` is kept).
    epochs: epochs to analyse (default: every saved one).
    variables: ``"student"`` (what training logs) or ``"teacher"`` (EMA).
    overrides: further dotted config overrides, e.g. ``{"data.data_dir":
      ...}`` when the data lives elsewhere on this machine.
    run: name in the rows (default: the workdir's base name).
    progress: show a progress bar over epochs.

  Returns:
    Tidy rows (see :func:`linearity_rows`), ordered by epoch.

  Raises:
    AnalysisError: no config.json or no checkpoints directory, or a bad
      ``variables`` value.
  """
  if variables not in ("student", "teacher"):
    raise AnalysisError(f"variables must be 'student' or 'teacher', got "
                        f"{variables!r}")
  run = run or default_run_name(workdir)
  ov = dict(overrides or {})
  for key, value in (("linearity.split", split),
                     ("linearity.num_tuples", num_tuples),
                     ("linearity.batch_size", batch_size),
                     ("linearity.num_points", num_points)):
    if value is not None:
      ov[key] = value
  ov["linearity.enabled"] = True
  config = config_from_workdir(workdir, ov)
  config_lib.validate(config, device_count=1)

  ckpt_dir = os.path.join(workdir, CHECKPOINT_SUBDIR)
  if not os.path.isdir(ckpt_dir):
    raise AnalysisError(f"{workdir} has no {CHECKPOINT_SUBDIR}/ directory.")

  # Heavy imports only here: tables and figures do not need the trainer.
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  from mixlin_jax import checkpoints as ckpt_lib  # pylint: disable=import-outside-toplevel

  checkpoints = _ReadOnlyCheckpoints(ckpt_dir)
  try:
    available = checkpoints.epochs()
    logged = {int(r["epoch"]) for r in workdir_lib.read_metrics(workdir)
              if "epoch" in r}
    if epochs is None:
      wanted = list(available)
      lost = logged - set(available)
    else:
      wanted = sorted({int(e) for e in epochs})
      lost = set(wanted) - set(available)
    for epoch, reason in sorted(checkpoints.unreadable.items()):
      if epochs is None or epoch in wanted:
        log.warning("%s: checkpoint of epoch %d is unreadable and was "
                    "skipped: %s", workdir, epoch, reason)
      lost.discard(epoch)
    if lost:
      log.warning("%s: no finalized checkpoint for epoch(s) %s (deleted, "
                  "pruned by checkpoint.max_to_keep or unfinished); "
                  "skipped.", workdir, epoch_ranges(lost))
    todo = [e for e in wanted if e in set(available)]
    if not todo:
      log.warning("%s: no checkpoint to analyse.", workdir)
      return []

    evaluator, skeleton = _evaluator_for(config)

    rows: list[dict] = []
    bar = tqdm(todo, desc=f"linearity {run}", unit="epoch",
               disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in bar:
      try:
        state, _ = checkpoints.restore(epoch, skeleton)
        chosen = (state.student_variables() if variables == "student" else
                  state.teacher_variables())
        if not _all_finite(chosen):
          raise ValueError("restored parameters are not finite")
      except Exception as e:  # pylint: disable=broad-except
        # Orbax raises many types for damaged data; any means "unusable".
        log.warning("%s: checkpoint of epoch %d is unreadable and was "
                    "skipped: %s", workdir, epoch, ckpt_lib.describe_error(e))
        continue
      result = evaluator(chosen)
      rows.extend(linearity_rows(result, run=run, epoch=epoch,
                                 source=f"analysis:{variables}"))
    return rows
  finally:
    checkpoints.close()
