"""Post-hoc analysis of finished (or running) workdirs: tables, figures, comparisons.

Three layers, each usable on its own from a notebook:

* **Recompute** -- :func:`analyze_workdir` rebuilds a run's config from its
  ``config.json`` (:func:`config_from_workdir`), reloads every saved epoch
  *read-only* and evaluates the linearity metrics with the very
  :class:`~mixlin_jax.linearity.LinearityEvaluator` used during training
  (same ``linearity.seed`` -> same tuples and weights), optionally on another
  split, more tuples or another ``K``.  It writes nothing.  The compiled
  evaluator is cached per (config, device), so re-analysing a run, or a copy
  of it, does not compile again (:func:`clear_cache` frees it).
* **Tables** -- tidy rows, one per (run, epoch, layer, metric, weight):
  :func:`linearity_rows` (from an evaluator result or a logged record),
  :func:`logged_linearity_rows` and :func:`metrics_rows` (from
  ``metrics.jsonl``, no recompute), :func:`write_table` / :func:`read_table`.
* **Figures** (PNG, written with matplotlib's Agg canvas directly, so the
  global pyplot backend of a notebook is left alone): :func:`plot_heatmaps`,
  :func:`plot_layer_profiles`, :func:`plot_training_curves` for one run;
  :func:`plot_run_overlay`, :func:`plot_final_profiles`,
  :func:`convergence_table` and :func:`compare_runs` across runs.

Cross-device restore.  The state skeleton is built on the analysing machine:
``jax.eval_shape`` of the local :class:`~mixlin_jax.train.Trainer`'s
initialiser (no compute, no parameter allocation) with every leaf given a
replicated sharding over a one-device mesh.  Orbax reads the stored arrays
into that skeleton's shardings, so a checkpoint written by 8 GPUs (or a TPU
slice) restores onto a laptop CPU and vice versa.  Parameters are stored in
float32 whatever the compute dtype, and the linearity evaluator always runs
the float32 eval model, so the recomputed values match the logged ones up to
float reassociation.

Weight averaging.  Figures show, per (run, epoch, layer, metric), the mean
over the mixing weights of the per-weight means (every weight uses the same
tuples).  The band drawn around it is the mean of the per-weight standard
errors, an upper bound on the standard error of that average (Minkowski's
inequality; the per-weight estimates are positively correlated, so the
bound is not loose by much).  The tables keep every weight.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import ml_collections
import numpy as np

from mixlin_jax import config as config_lib
from mixlin_jax import workdir as workdir_lib
from mixlin_jax.linearity import METRICS

log = logging.getLogger(__name__)

__all__ = [
    "AnalysisError",
    "METRIC_LABELS",
    "config_from_workdir",
    "state_skeleton",
    "clear_cache",
    "analyze_workdir",
    "linearity_rows",
    "logged_linearity_rows",
    "metrics_rows",
    "average_over_weights",
    "layer_order",
    "display_layer",
    "write_table",
    "read_table",
    "write_csv",
    "plot_heatmaps",
    "plot_layer_profiles",
    "plot_training_curves",
    "plot_run_overlay",
    "plot_final_profiles",
    "convergence_table",
    "format_table",
    "run_analysis",
    "compare_runs",
]

METRIC_LABELS = {
    "interp_error": "interpolation error",
    "relative_error": "relative error",
    "tangent_residual": "tangent residual",
}
CHECKPOINT_SUBDIR = "checkpoints"
ANALYSIS_SUBDIR = "analysis"
TABLE_NAME = "linearity"
# Accuracy and loss columns of metrics_rows() used by the figures and the
# convergence table.
ACCURACY_KEYS = ("test.student_accuracy", "test.teacher_accuracy")
LOSS_KEYS = ("train.loss", "train.supervised", "test.student_loss",
             "test.teacher_loss")
_LOG_SPAN = 100.0  # a log axis when the positive values span >= 2 decades


class AnalysisError(RuntimeError):
  """A workdir cannot be analysed (no config, no checkpoints, bad argument)."""


# ---------------------------------------------------------------------------
# Config


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


# ---------------------------------------------------------------------------
# Recompute from checkpoints


def state_skeleton(trainer) -> Any:
  """Abstract TrainState of ``trainer`` placed replicated on its mesh.

  ``jax.eval_shape`` of the initialiser: shapes and dtypes only, nothing is
  computed or allocated.  Used as the restore target, it decides where the
  restored arrays land (see the module docstring).
  """
  import jax  # pylint: disable=import-outside-toplevel
  from mixlin_jax import parallel  # pylint: disable=import-outside-toplevel
  sharding = parallel.replicated(trainer.mesh)
  shapes = jax.eval_shape(trainer._init_state)  # pylint: disable=protected-access
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      shapes)


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
  from mixlin_jax import train as train_lib  # pylint: disable=import-outside-toplevel
  device = jax.local_devices()[0]
  key = json.dumps([config_lib.flatten(config), str(device)], sort_keys=True)
  if key in _EVALUATORS:
    _EVALUATORS[key] = _EVALUATORS.pop(key)  # most recently used last
    return _EVALUATORS[key]
  split_data = train_lib.load_split(config)
  trainer = train_lib.Trainer(config, split_data,
                              parallel.make_mesh([device]))
  entry = (train_lib.make_linearity_evaluator(config, trainer),
           state_skeleton(trainer))
  while len(_EVALUATORS) >= _EVALUATOR_CACHE_SIZE:
    _EVALUATORS.pop(next(iter(_EVALUATORS)))
  _EVALUATORS[key] = entry
  return entry


def _ranges(values: Iterable[int]) -> str:
  """[1, 2, 3, 7] -> '1-3, 7'."""
  values = sorted(values)
  out, start = [], None
  for i, v in enumerate(values):
    if start is None:
      start = v
    if i + 1 == len(values) or values[i + 1] != v + 1:
      out.append(str(start) if start == v else f"{start}-{v}")
      start = None
  return ", ".join(out)


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
                  ckpt_lib._short(e))  # pylint: disable=protected-access
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
        reason = ckpt_lib._short(e)  # pylint: disable=protected-access
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
  run = run or _default_name(workdir)
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
                  "skipped.", workdir, _ranges(lost))
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
                    "skipped: %s", workdir, epoch, ckpt_lib._short(e))  # pylint: disable=protected-access
        continue
      result = evaluator(chosen)
      rows.extend(linearity_rows(result, run=run, epoch=epoch,
                                 source=f"analysis:{variables}"))
    return rows
  finally:
    checkpoints.close()


# ---------------------------------------------------------------------------
# Tables


def _default_name(workdir: str) -> str:
  return os.path.basename(os.path.normpath(os.path.abspath(workdir)))


def _fmt_weights(w: Sequence[float] | None) -> str:
  return "" if w is None else " ".join(f"{x:.4g}" for x in w)


def linearity_rows(result: Mapping[str, Any], *, run: str, epoch: int,
                   source: str = "") -> list[dict]:
  """Tidy rows from a :class:`LinearityEvaluator` result (or a logged one).

  One row per (layer, metric, weight index) with columns ``run, epoch,
  layer, metric, weight_index, weights, t, value, stderr, num_points,
  num_tuples, source``.  ``weights`` is the weight vector as a
  space-separated string ("0.9 0.1"); ``t`` the path parameter: ``w_2`` for
  ``K = 2``, the ``tangent_t`` entry for the tangent residual, None for the
  other metrics when ``K > 2`` (Dirichlet weights have no single ``t``).
  For ``K > 2`` the tangent residual's index runs over ``tangent_t`` and its
  ``weights`` is empty.
  """
  weights = result["weights"]
  k = len(weights[0])
  tangent_t = result.get("tangent_t")
  rows = []
  for metric in METRICS:
    if metric not in result:
      continue
    for layer in result["layers"]:
      stats = result[metric][layer]
      for i, (mean, stderr) in enumerate(zip(stats["mean"], stats["stderr"])):
        if metric == "tangent_residual":
          w = weights[i] if k == 2 else None
          t = float(tangent_t[i]) if tangent_t is not None else (
              float(weights[i][1]) if k == 2 else None)
        else:
          w = weights[i]
          t = float(w[1]) if k == 2 else None
        rows.append({
            "run": run, "epoch": int(epoch), "layer": layer,
            "metric": metric, "weight_index": i, "weights": _fmt_weights(w),
            # float32 grid values: 0.1 is stored as 0.10000000149...
            "t": None if t is None else round(t, 6), "value": float(mean),
            "stderr": None if stderr is None else float(stderr),
            "num_points": k, "num_tuples": int(result["num_tuples"]),
            "source": source,
        })
  return rows


def _records_by_epoch(workdir: str) -> list[dict]:
  """metrics.jsonl records, one per epoch (the last one wins), by epoch."""
  by_epoch = {}
  for r in workdir_lib.read_metrics(workdir):
    if "epoch" in r:
      by_epoch[int(r["epoch"])] = r
  return [by_epoch[e] for e in sorted(by_epoch)]


def logged_linearity_rows(workdir: str, run: str | None = None) -> list[dict]:
  """Tidy rows of the linearity logged during training (no recompute)."""
  run = run or _default_name(workdir)
  rows = []
  for r in _records_by_epoch(workdir):
    if "linearity" in r:
      rows.extend(linearity_rows(r["linearity"], run=run, epoch=r["epoch"],
                                 source="logged"))
  return rows


def metrics_rows(workdir: str, run: str | None = None) -> list[dict]:
  """One row per logged epoch: accuracy, losses, timings (no linearity).

  Columns: ``run, epoch, step, learning_rate, images_per_second`` and the
  nested groups flattened with a dot: ``train.loss``, ``train.supervised``,
  ``train.consistency``, ``train.consistency_weight``,
  ``train.train_accuracy``, ``test.student_accuracy``, ``test.student_loss``,
  ``test.teacher_accuracy``, ``test.teacher_loss``, ``seconds.train``,
  ``seconds.eval``, ``seconds.linearity``.
  """
  run = run or _default_name(workdir)
  rows = []
  for r in _records_by_epoch(workdir):
    row = {"run": run, "epoch": int(r["epoch"])}
    for key in ("step", "learning_rate", "images_per_second"):
      if key in r:
        row[key] = r[key]
    for group in ("train", "test", "seconds"):
      for key, value in (r.get(group) or {}).items():
        row[f"{group}.{key}"] = value
    rows.append(row)
  return rows


def _finite(x) -> bool:
  return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def average_over_weights(rows: Iterable[Mapping]) -> list[dict]:
  """Rows -> one row per (run, epoch, layer, metric): the mean over weights.

  ``value`` is the mean of the per-weight values; ``stderr`` the mean of the
  per-weight standard errors (an upper bound on the average's, see the
  module docstring); ``num_weights`` how many were averaged.
  """
  groups: dict[tuple, list] = {}
  for r in rows:
    groups.setdefault((r["run"], r["epoch"], r["layer"], r["metric"]),
                      []).append(r)
  out = []
  for (run, epoch, layer, metric), group in groups.items():
    values = [g["value"] for g in group if _finite(g["value"])]
    errs = [g["stderr"] for g in group if _finite(g.get("stderr"))]
    out.append({"run": run, "epoch": epoch, "layer": layer, "metric": metric,
                "value": float(np.mean(values)) if values else math.nan,
                "stderr": float(np.mean(errs)) if errs else math.nan,
                "num_weights": len(group)})
  return out


def layer_order(layers: Iterable[str]) -> list[str]:
  """Distinct layer names in network order (the ``NN_`` prefix sorts them)."""
  return sorted(set(layers))


def display_layer(name: str) -> str:
  """``'02_conv3'`` -> ``'conv3'``."""
  return re.sub(r"^\d+_", "", name)


def _clean(value):
  """NaN/inf -> None for strict JSON; numpy scalars -> python."""
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_csv(rows: Sequence[Mapping], path: str) -> str:
  """Writes ``rows`` as CSV (columns in first-seen order); returns ``path``."""
  columns: list[str] = []
  for r in rows:
    for k in r:
      if k not in columns:
        columns.append(k)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, restval="")
    writer.writeheader()
    for r in rows:
      writer.writerow({k: "" if v is None else v for k, v in r.items()})
  return path


def write_table(rows: Sequence[Mapping], out_dir: str,
                name: str = TABLE_NAME) -> tuple[str, str]:
  """Writes ``<out_dir>/<name>.csv`` and ``<name>.json``; returns both paths.

  The JSON is a list of row objects, strict JSON (NaN written as null).
  """
  os.makedirs(out_dir, exist_ok=True)
  csv_path = write_csv(rows, os.path.join(out_dir, f"{name}.csv"))
  json_path = os.path.join(out_dir, f"{name}.json")
  with open(json_path, "w") as f:
    json.dump([{k: _clean(v) for k, v in r.items()} for r in rows], f,
              indent=1, allow_nan=False)
  return csv_path, json_path


def read_table(path: str) -> list[dict]:
  """Rows of a table written by :func:`write_table` (the .json file)."""
  with open(path) as f:
    rows = json.load(f)
  for r in rows:  # null -> NaN so arithmetic works
    for key in ("value", "stderr"):
      if r.get(key) is None:
        r[key] = math.nan
  return rows


# ---------------------------------------------------------------------------
# Figures


def _figure(nrows: int, ncols: int, width: float, height: float):
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(width, height), layout="constrained")
  axes = fig.subplots(nrows, ncols, squeeze=False)
  return fig, axes


def _save(fig, path: str, dpi: int = 100) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi, format="png")
  return path


def _epoch_axis(ax) -> None:
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("epoch")


def _wants_log(values: Iterable[float]) -> bool:
  v = np.asarray([x for x in values if _finite(x)], np.float64)
  pos = v[v > 0]
  return bool(pos.size) and bool(np.all(v > 0)) and (
      pos.max() / pos.min() >= _LOG_SPAN)


def _single_run(rows: Sequence[Mapping], run: str | None) -> tuple[str, list]:
  runs = sorted({r["run"] for r in rows})
  if run is None:
    if len(runs) != 1:
      raise AnalysisError(f"rows hold runs {runs}; pass run=...")
    run = runs[0]
  return run, [r for r in rows if r["run"] == run]


def _metrics_in(rows, metrics) -> list[str]:
  present = {r["metric"] for r in rows}
  return [m for m in metrics if m in present]


def _colors(n: int, cmap: str = "tab10"):
  import matplotlib  # pylint: disable=import-outside-toplevel
  if cmap == "tab10" and n <= 10:
    return [matplotlib.colormaps["tab10"](i) for i in range(n)]
  cm = matplotlib.colormaps[cmap if cmap != "tab10" else "viridis"]
  return [cm(x) for x in np.linspace(0.0, 0.9, max(n, 1))]


def _table(avg: Sequence[Mapping], metric: str) -> dict:
  return {(r["run"], r["epoch"], r["layer"]): r for r in avg
          if r["metric"] == metric}


def plot_heatmaps(rows: Sequence[Mapping], path: str, *,
                  run: str | None = None,
                  metrics: Sequence[str] = METRICS) -> str:
  """Layer x epoch heatmap per metric (value averaged over the weights).

  One panel per metric; rows are layers in network order (input at the
  top), columns epochs; a log colour scale where the values span two
  decades or more.  Cells without a value (a skipped epoch) are grey.
  """
  from matplotlib.colors import LogNorm, Normalize  # pylint: disable=import-outside-toplevel
  import matplotlib  # pylint: disable=import-outside-toplevel
  run, rows = _single_run(rows, run)
  avg = average_over_weights(rows)
  metrics = _metrics_in(avg, metrics)
  layers = layer_order(r["layer"] for r in avg)
  epochs = sorted({r["epoch"] for r in avg})
  fig, axes = _figure(1, len(metrics),
                      max(4.2, 0.32 * len(epochs) + 2.6) * len(metrics),
                      max(3.0, 0.34 * len(layers) + 1.6))
  for ax, metric in zip(axes[0], metrics):
    table = _table(avg, metric)
    grid = np.full((len(layers), len(epochs)), np.nan)
    for i, layer in enumerate(layers):
      for j, epoch in enumerate(epochs):
        r = table.get((run, epoch, layer))
        if r is not None:
          grid[i, j] = r["value"]
    finite = grid[np.isfinite(grid)]
    log_scale = _wants_log(finite.tolist())
    if log_scale:
      norm = LogNorm(vmin=finite[finite > 0].min(), vmax=finite.max())
    else:
      norm = Normalize(vmin=finite.min() if finite.size else 0,
                       vmax=finite.max() if finite.size else 1)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.8")
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap,
                   norm=norm, interpolation="nearest")
    if len(epochs) <= 16 and len(layers) <= 12:  # small: print the values
      for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
          shade = norm(max(v, norm.vmin) if log_scale else v)
          ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=6.5,
                  color="black" if shade > 0.55 else "white")
    ax.set_yticks(range(len(layers)), [display_layer(l) for l in layers])
    step = max(1, math.ceil(len(epochs) / 12))
    ticks = list(range(0, len(epochs), step))
    ax.set_xticks(ticks, [str(epochs[j]) for j in ticks])
    ax.set_xlabel("epoch")
    ax.set_ylabel("layer (input at top)")
    ax.set_title(METRIC_LABELS.get(metric, metric))
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label("mean over mixing weights" +
                   (" (log scale)" if log_scale else ""))
  fig.suptitle(f"{run}: layer-wise linearity over training (lower = more "
               "linear)")
  return _save(fig, path)


def _pick_epochs(epochs: Sequence[int], count: int = 5) -> list[int]:
  epochs = sorted(set(epochs))
  if len(epochs) <= count:
    return epochs
  idx = np.unique(np.round(np.linspace(0, len(epochs) - 1, count)).astype(int))
  return [epochs[i] for i in idx]


def _profile_axis(ax, layers, log_scale):
  ax.set_xticks(range(len(layers)), [display_layer(l) for l in layers],
                rotation=30 if len(layers) > 6 else 0, ha="right"
                if len(layers) > 6 else "center")
  ax.set_xlabel("layer (network order)")
  if log_scale:
    ax.set_yscale("log")
  ax.grid(True, alpha=0.3)


def _band(ax, x, y, e, color):
  y, e = np.asarray(y, float), np.asarray(e, float)
  ok = np.isfinite(y) & np.isfinite(e)
  if ok.any():
    lo = np.where(ok, y - e, np.nan)
    hi = np.where(ok, y + e, np.nan)
    lo = np.where(lo > 0, lo, np.where(ok, y * 0.5, np.nan))  # keep log axes sane
    ax.fill_between(np.asarray(x)[ok], lo[ok], hi[ok], color=color,
                    alpha=0.18, linewidth=0)


def plot_layer_profiles(rows: Sequence[Mapping], path: str, *,
                        epochs: Sequence[int] | None = None,
                        run: str | None = None,
                        metrics: Sequence[str] = METRICS) -> str:
  """Per-layer profile at chosen epochs: x = layer, one line per epoch.

  ``epochs`` defaults to up to five evenly spaced analysed epochs (first and
  last included).  Bands: mean per-weight standard error.
  """
  run, rows = _single_run(rows, run)
  avg = average_over_weights(rows)
  metrics = _metrics_in(avg, metrics)
  layers = layer_order(r["layer"] for r in avg)
  have = sorted({r["epoch"] for r in avg})
  chosen = [e for e in (epochs or _pick_epochs(have)) if e in have]
  missing = sorted(set(epochs or []) - set(have))
  if missing:
    log.warning("plot_layer_profiles: epochs %s are not in the rows.",
                _ranges(missing))
  colors = _colors(len(chosen), "viridis")
  fig, axes = _figure(1, len(metrics), 4.6 * len(metrics), 3.8)
  for ax, metric in zip(axes[0], metrics):
    table = _table(avg, metric)
    values = []
    for color, epoch in zip(colors, chosen):
      y = [table[(run, epoch, l)]["value"] if (run, epoch, l) in table
           else np.nan for l in layers]
      e = [table[(run, epoch, l)]["stderr"] if (run, epoch, l) in table
           else np.nan for l in layers]
      values += y
      ax.plot(range(len(layers)), y, "o-", color=color, label=f"epoch {epoch}")
      _band(ax, range(len(layers)), y, e, color)
    _profile_axis(ax, layers, _wants_log(values))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric) + " (mean over weights)")
    ax.set_title(METRIC_LABELS.get(metric, metric))
    ax.legend(title=run, fontsize="small")
  fig.suptitle(f"{run}: linearity by layer at selected epochs (lower = more "
               "linear)")
  return _save(fig, path)


def plot_training_curves(rows: Sequence[Mapping], path: str, *,
                         title: str | None = None) -> str:
  """Test accuracy (student solid, EMA teacher dashed) and losses by epoch.

  ``rows`` from :func:`metrics_rows`, one or several runs (colour = run).
  Loss panel: train loss (solid; includes the weighted consistency term
  for unsupervised mixup), supervised train loss (dotted, when it differs)
  and student test loss (dashed).
  """
  from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel
  runs = list(dict.fromkeys(r["run"] for r in rows))
  colors = _colors(len(runs))
  fig, axes = _figure(1, 2, 10.5, 4.3)
  ax_acc, ax_loss = axes[0]
  styles = {"test.student_accuracy": "-", "test.teacher_accuracy": "--",
            "train.loss": "-", "train.supervised": ":",
            "test.student_loss": "--"}
  names = {"test.student_accuracy": "student (test)",
           "test.teacher_accuracy": "EMA teacher (test)",
           "train.loss": "train loss (total)",
           "train.supervised": "train loss (supervised term)",
           "test.student_loss": "test loss (student)"}
  used = set()
  for color, run in zip(colors, runs):
    rr = sorted((r for r in rows if r["run"] == run), key=lambda r: r["epoch"])
    x = [r["epoch"] for r in rr]
    for key in ("test.student_accuracy", "test.teacher_accuracy"):
      y = [r.get(key, np.nan) for r in rr]
      if any(_finite(v) for v in y):
        ax_acc.plot(x, y, styles[key], color=color, marker=".")
        used.add(key)
    for key in ("train.loss", "train.supervised", "test.student_loss"):
      y = [r.get(key, np.nan) for r in rr]
      if key == "train.supervised" and all(
          _finite(a) and _finite(b) and abs(a - b) < 1e-9
          for a, b in zip(y, (r.get("train.loss") for r in rr))):
        continue  # identical to the total (no consistency term)
      if any(_finite(v) for v in y):
        ax_loss.plot(x, y, styles[key], color=color)
        used.add(key)
  run_handles = [Line2D([], [], color=c, lw=2, label=r)
                 for c, r in zip(colors, runs)]
  for ax, keys in ((ax_acc, ("test.student_accuracy",
                             "test.teacher_accuracy")),
                   (ax_loss, ("train.loss", "train.supervised",
                              "test.student_loss"))):
    style_handles = [Line2D([], [], color="0.3", ls=styles[k],
                            label=names[k]) for k in keys if k in used]
    ax.legend(handles=style_handles, fontsize="small")
    _epoch_axis(ax)
    ax.grid(True, alpha=0.3)
  fig.legend(handles=run_handles, loc="outside lower center",
             ncols=min(len(runs), 6), title="run" if len(runs) > 1 else None)
  ax_acc.set_ylabel("test accuracy")
  ax_acc.set_title("accuracy")
  ax_loss.set_ylabel("cross-entropy")
  ax_loss.set_title("loss")
  loss_values = [r.get(k) for r in rows for k in LOSS_KEYS]
  if _wants_log(v for v in loss_values if v is not None):
    ax_loss.set_yscale("log")
  fig.suptitle(title or ("training curves: " + ", ".join(runs)))
  return _save(fig, path)


def plot_run_overlay(rows: Sequence[Mapping], path: str, *,
                     metric: str = "interp_error",
                     runs: Sequence[str] | None = None,
                     ncols: int | None = None) -> str:
  """Small multiples: one panel per layer, x = epoch, one line per run."""
  avg = [r for r in average_over_weights(rows) if r["metric"] == metric]
  if not avg:
    raise AnalysisError(f"no rows for metric {metric!r}")
  runs = list(runs or dict.fromkeys(r["run"] for r in avg))
  layers = layer_order(r["layer"] for r in avg)
  ncols = ncols or min(len(layers), 3 if len(layers) <= 6 else 4)
  nrows = math.ceil(len(layers) / ncols)
  fig, axes = _figure(nrows, ncols, 3.5 * ncols, 2.7 * nrows + 0.6)
  colors = _colors(len(runs))
  table = _table(avg, metric)
  handles = []
  for idx, layer in enumerate(layers):
    ax = axes[idx // ncols][idx % ncols]
    values = []
    for color, run in zip(colors, runs):
      pts = sorted((k[1], v) for k, v in table.items()
                   if k[0] == run and k[2] == layer)
      if not pts:
        continue
      x = [p[0] for p in pts]
      y = [p[1]["value"] for p in pts]
      values += y
      line, = ax.plot(x, y, "-", color=color, marker="." if len(x) < 30
                      else None, label=run)
      _band(ax, x, y, [p[1]["stderr"] for p in pts], color)
      if run not in [h.get_label() for h in handles]:
        handles.append(line)
    if _wants_log(values):
      ax.set_yscale("log")
    ax.set_title(display_layer(layer))
    _epoch_axis(ax)
    ax.grid(True, alpha=0.3)
    if idx % ncols == 0:
      ax.set_ylabel(METRIC_LABELS.get(metric, metric))
  for idx in range(len(layers), nrows * ncols):
    axes[idx // ncols][idx % ncols].set_visible(False)
  fig.legend(handles=handles, loc="outside lower center",
             ncols=min(len(handles), 6), title="run")
  fig.suptitle(f"{METRIC_LABELS.get(metric, metric)} per layer over training "
               "(mean over mixing weights; lower = more linear)")
  return _save(fig, path)


def plot_final_profiles(rows: Sequence[Mapping], path: str, *,
                        runs: Sequence[str] | None = None,
                        metrics: Sequence[str] = METRICS,
                        epoch: int | None = None) -> str:
  """Per-layer profile at each run's final epoch (or ``epoch``), one line per run."""
  avg = average_over_weights(rows)
  metrics = _metrics_in(avg, metrics)
  runs = list(runs or dict.fromkeys(r["run"] for r in avg))
  layers = layer_order(r["layer"] for r in avg)
  colors = _colors(len(runs))
  last = {run: max((r["epoch"] for r in avg if r["run"] == run), default=None)
          for run in runs}
  shared = epoch if epoch is not None else (
      next(iter(set(last.values()))) if len(set(last.values())) == 1
      else None)
  fig, axes = _figure(1, len(metrics), 4.6 * len(metrics), 3.9)
  for ax, metric in zip(axes[0], metrics):
    table = _table(avg, metric)
    values = []
    for color, run in zip(colors, runs):
      have = sorted({k[1] for k in table if k[0] == run})
      if not have:
        continue
      e = epoch if epoch is not None else have[-1]
      if e not in have:
        log.warning("plot_final_profiles: run %s has no epoch %d.", run, e)
        continue
      y = [table[(run, e, l)]["value"] if (run, e, l) in table else np.nan
           for l in layers]
      err = [table[(run, e, l)]["stderr"] if (run, e, l) in table else np.nan
             for l in layers]
      values += y
      ax.plot(range(len(layers)), y, "o-", color=color,
              label=run if shared is not None else f"{run} (epoch {e})")
      _band(ax, range(len(layers)), y, err, color)
    _profile_axis(ax, layers, _wants_log(values))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric) + " (mean over weights)")
    ax.set_title(METRIC_LABELS.get(metric, metric))
    ax.legend(fontsize="small")
  which = ("final epoch" if epoch is None else "epoch") + (
      f" {shared}" if shared is not None else "")
  fig.suptitle(f"linearity by layer at the {which}, per run (lower = more "
               "linear)")
  return _save(fig, path)


# ---------------------------------------------------------------------------
# Convergence


def convergence_table(rows: Sequence[Mapping], *,
                      target_accuracy: float | None = None,
                      target_loss: float | None = None,
                      fraction: float = 0.9,
                      accuracy_key: str = "test.student_accuracy",
                      loss_key: str = "train.supervised") -> list[dict]:
  """Epochs each run needs to reach a test accuracy and a train loss.

  Args:
    rows: :func:`metrics_rows` of one or more runs.
    target_accuracy: default ``fraction`` x the best *final* accuracy among
      the runs (so the best run reaches it by construction).
    target_loss: default the lowest final loss among the runs / ``fraction``.
    accuracy_key, loss_key: columns of :func:`metrics_rows`.  The default
      loss is the supervised term, the cross-entropy on labelled images for
      ERM and unsupervised mixup alike (``train.loss`` adds the weighted
      consistency term for the latter); for supervised mixup it is measured
      on mixed inputs and targets, so compare those runs' loss with care.

  Returns:
    One row per run: ``run, final_epoch, final_accuracy, best_accuracy,
    best_accuracy_epoch, target_accuracy, epochs_to_target_accuracy,
    final_loss, min_loss, target_loss, epochs_to_target_loss,
    accuracy_key, loss_key``; an ``epochs_to_*`` of None means never
    reached.
  """
  runs = list(dict.fromkeys(r["run"] for r in rows))
  series = {}
  for run in runs:
    rr = sorted((r for r in rows if r["run"] == run), key=lambda r: r["epoch"])
    series[run] = (
        [r["epoch"] for r in rr],
        [r.get(accuracy_key, math.nan) for r in rr],
        [r.get(loss_key, math.nan) for r in rr])
  finals_acc = [s[1][-1] for s in series.values() if s[0] and _finite(s[1][-1])]
  finals_loss = [s[2][-1] for s in series.values()
                 if s[0] and _finite(s[2][-1])]
  if target_accuracy is None and finals_acc:
    target_accuracy = fraction * max(finals_acc)
  if target_loss is None and finals_loss:
    target_loss = min(finals_loss) / fraction

  def first(epochs, values, ok):
    for e, v in zip(epochs, values):
      if _finite(v) and ok(v):
        return e
    return None

  out = []
  for run, (epochs, acc, loss) in series.items():
    acc_ok = [(e, a) for e, a in zip(epochs, acc) if _finite(a)]
    loss_ok = [v for v in loss if _finite(v)]
    best = max(acc_ok, key=lambda p: p[1]) if acc_ok else (None, None)
    out.append({
        "run": run,
        "final_epoch": epochs[-1] if epochs else None,
        "final_accuracy": acc[-1] if acc else None,
        "best_accuracy": best[1],
        "best_accuracy_epoch": best[0],
        "target_accuracy": target_accuracy,
        "epochs_to_target_accuracy": None if target_accuracy is None else
        first(epochs, acc, lambda v: v >= target_accuracy),
        "final_loss": loss[-1] if loss else None,
        "min_loss": min(loss_ok) if loss_ok else None,
        "target_loss": target_loss,
        "epochs_to_target_loss": None if target_loss is None else
        first(epochs, loss, lambda v: v <= target_loss),
        "accuracy_key": accuracy_key,
        "loss_key": loss_key,
    })
  return out


def format_table(rows: Sequence[Mapping],
                 columns: Sequence[str] | None = None) -> str:
  """Plain-text table (floats to 4 significant digits, None as '-')."""
  if not rows:
    return "(no rows)"
  columns = list(columns or rows[0].keys())

  def fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
      return "-"
    if isinstance(v, float):
      return f"{v:.4g}"
    return str(v)

  cells = [[fmt(r.get(c)) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells))
            for i, c in enumerate(columns)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
  lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths))
            for row in cells]
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# One-call drivers (what experiments/analyze.py and compare.py run)


def run_analysis(workdir: str, out_dir: str | None = None, *,
                 profile_epochs: Sequence[int] | None = None,
                 **analyze_kwargs) -> dict:
  """:func:`analyze_workdir`, then its table and figures in ``out_dir``.

  ``out_dir`` defaults to ``<workdir>/analysis``.  Writes ``linearity.csv``,
  ``linearity.json``, ``heatmaps.png``, ``layer_profiles.png`` and
  ``training_curves.png`` (the last from metrics.jsonl).  Returns
  ``{"rows", "table", "figures", "skipped"}`` where ``skipped`` lists the
  requested (or saved) epochs that produced no rows.
  """
  out_dir = out_dir or os.path.join(workdir, ANALYSIS_SUBDIR)
  run = analyze_kwargs.pop("run", None) or _default_name(workdir)
  rows = analyze_workdir(workdir, run=run, **analyze_kwargs)
  requested = analyze_kwargs.get("epochs")
  if requested is None:
    requested = [r["epoch"] for r in workdir_lib.read_metrics(workdir)
                 if "epoch" in r]
  done = {r["epoch"] for r in rows}
  out = {"rows": rows, "table": (), "figures": [],
         "skipped": sorted(set(int(e) for e in requested) - done)}
  if not rows:
    return out
  out["table"] = write_table(rows, out_dir)
  out["figures"].append(plot_heatmaps(rows, os.path.join(out_dir,
                                                         "heatmaps.png")))
  out["figures"].append(plot_layer_profiles(
      rows, os.path.join(out_dir, "layer_profiles.png"),
      epochs=profile_epochs))
  curves = metrics_rows(workdir, run)
  if curves:
    out["figures"].append(plot_training_curves(
        curves, os.path.join(out_dir, "training_curves.png")))
  return out


def _unique_names(workdirs: Sequence[str]) -> list[str]:
  names = [_default_name(w) for w in workdirs]
  if len(set(names)) == len(names):
    return names
  # Same base name in different folders: prefix the parent folder.
  return [os.path.join(os.path.basename(os.path.dirname(
      os.path.normpath(os.path.abspath(w)))), n) for w, n in
          zip(workdirs, names)]


def _linearity_setup(workdir: str) -> dict:
  flat = workdir_lib.read_config(workdir) or {}
  return {k: flat.get(k) for k in ("linearity.split", "linearity.num_tuples",
                                   "linearity.num_points", "linearity.seed",
                                   "linearity.grid", "data.dataset",
                                   "data.num_test")}


def compare_runs(workdirs: Sequence[str], out_dir: str, *,
                 names: Sequence[str] | None = None,
                 target_accuracy: float | None = None,
                 target_loss: float | None = None,
                 fraction: float = 0.9,
                 accuracy_key: str = "test.student_accuracy",
                 loss_key: str = "train.supervised",
                 metrics: Sequence[str] = METRICS,
                 analysis_subdir: str = ANALYSIS_SUBDIR) -> dict:
  """Overlays several runs from their logs (and analysis tables, if any).

  Reads each workdir's ``metrics.jsonl`` (the linearity logged during
  training: no recompute) and, where present,
  ``<workdir>/<analysis_subdir>/linearity.json``.  Writes into ``out_dir``:

  * ``logged_<metric>_by_layer.png`` -- one panel per layer, x = epoch,
    one line per run; ``logged_final_profiles.png`` -- per-layer profile at
    each run's final epoch, one line per run;
  * the same with prefix ``analysis_`` from the analysis tables (runs that
    have one);
  * ``training_curves.png``; ``linearity_logged.csv/.json`` (all runs);
  * ``convergence.csv`` (see :func:`convergence_table`).

  Returns ``{"names", "figures", "tables", "convergence",
  "convergence_rows"}``.
  """
  workdirs = list(workdirs)
  if not workdirs:
    raise AnalysisError("no workdirs to compare")
  unknown = [m for m in metrics if m not in METRICS]
  if unknown or not metrics:
    raise AnalysisError(f"metrics must be a non-empty subset of {METRICS}, "
                        f"got {list(metrics)}")
  names = list(names) if names else _unique_names(workdirs)
  if len(names) != len(workdirs):
    raise AnalysisError(f"{len(names)} names for {len(workdirs)} workdirs")
  if len(set(names)) != len(names):
    raise AnalysisError(f"run names must be distinct, got {names}")
  for w in workdirs:
    if not os.path.exists(os.path.join(w, workdir_lib.METRICS_FILE)):
      raise AnalysisError(f"{w} has no {workdir_lib.METRICS_FILE}.")
  setups = {n: _linearity_setup(w) for n, w in zip(names, workdirs)}
  if len({json.dumps(s, sort_keys=True) for s in setups.values()}) > 1:
    log.warning("the runs measured linearity on different data or tuples; "
                "their curves are less directly comparable: %s", setups)

  os.makedirs(out_dir, exist_ok=True)
  figures, tables = [], []
  curves = [r for n, w in zip(names, workdirs) for r in metrics_rows(w, n)]
  if curves:
    figures.append(plot_training_curves(
        curves, os.path.join(out_dir, "training_curves.png"),
        title="training curves: " + " vs ".join(names)))

  sources = {"logged": [r for n, w in zip(names, workdirs)
                        for r in logged_linearity_rows(w, n)]}
  analysed = []
  for n, w in zip(names, workdirs):
    path = os.path.join(w, analysis_subdir, TABLE_NAME + ".json")
    if os.path.exists(path):
      for r in read_table(path):
        r["run"] = n
        analysed.append(r)
  if analysed:
    sources["analysis"] = analysed
  for prefix, rows in sources.items():
    if not rows:
      continue
    tables.extend(write_table(rows, out_dir, name=f"linearity_{prefix}"))
    present = _metrics_in(rows, metrics)
    run_order = [n for n in names if any(r["run"] == n for r in rows)]
    for metric in present:
      figures.append(plot_run_overlay(
          rows, os.path.join(out_dir, f"{prefix}_{metric}_by_layer.png"),
          metric=metric, runs=run_order))
    figures.append(plot_final_profiles(
        rows, os.path.join(out_dir, f"{prefix}_final_profiles.png"),
        runs=run_order, metrics=present))

  conv = convergence_table(curves, target_accuracy=target_accuracy,
                           target_loss=target_loss, fraction=fraction,
                           accuracy_key=accuracy_key, loss_key=loss_key)
  conv_path = write_csv(conv, os.path.join(out_dir, "convergence.csv"))
  return {"names": names, "figures": figures, "tables": tables,
          "convergence": conv_path, "convergence_rows": conv}
