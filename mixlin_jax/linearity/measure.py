"""Linearity of any Flax model in one call, as a table and a figure.

:func:`measure` checks its arguments (with errors that name the argument to
change), builds the model's
:class:`~mixlin_jax.linearity.representations.Representations`, runs the
same :class:`~mixlin_jax.linearity.evaluator.LinearityEvaluator` as
training, and returns a :class:`LinearityResult`: the record (the dict the
training loop logs) with a tidy ``pandas`` table and a per-layer plot.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mixlin_jax import jax_cache
from mixlin_jax.linearity import representations as reps_lib
from mixlin_jax.linearity.evaluator import LinearityEvaluator
from mixlin_jax.linearity.metrics import DEGENERATE_RTOL, METRICS
from mixlin_jax.linearity.sampling import DEFAULT_GRID

__all__ = ["LinearityResult", "measure", "results_table"]

TABLE_COLUMNS = (
    "layer",
    "metric",
    "weight_index",
    "weights",
    "t",
    "mean",
    "stderr",
    "count",
    "degenerate",
    "collapsed",
)


def results_table(record: dict):
  """One row per (layer, metric, weight) of a linearity record, as a
  ``pandas.DataFrame`` with the columns of :data:`TABLE_COLUMNS`.

  ``layer`` is an ordered categorical in network order (so sorting and
  grouping keep it); ``weights`` the weight vector as a tuple (None for the
  tangent residual when K > 2, whose rows are indexed by ``tangent_t``);
  ``t`` the path parameter (``w_2`` for K = 2, ``tangent_t`` for the
  tangent residual, else NaN); ``mean`` and ``stderr`` over the ``count``
  tuples kept; ``degenerate`` the tuples left out at that layer (for the
  tangent residual, at that ``t``: ``count_per_weight`` of the record);
  ``collapsed`` whether the layer is flagged dead/collapsed.  Works on any
  record, including those logged in ``metrics.jsonl`` (older records
  without counts give missing values there).
  """
  import pandas as pd  # pylint: disable=import-outside-toplevel

  layers = list(record["layers"])
  weights = record["weights"]
  k = len(weights[0])
  tangent_t = record.get("tangent_t")
  collapsed = set(record.get("collapsed_layers", ()))
  rows = []
  for metric in METRICS:
    if metric not in record:
      continue
    for layer in layers:
      stats = record[metric][layer]
      per_weight = stats.get("count_per_weight")
      for i, (mean, stderr) in enumerate(zip(stats["mean"], stats["stderr"])):
        if metric == "tangent_residual" and k > 2:
          w, t = None, float(tangent_t[i])
        else:
          w = tuple(float(v) for v in weights[i])
          t = w[1] if k == 2 else np.nan
        count, degenerate = stats.get("count"), stats.get("degenerate")
        if per_weight is not None:  # the tangent residual, t by t
          count = per_weight[i]
          degenerate = record["num_tuples"] - count
        rows.append(
            (
                layer,
                metric,
                i,
                w,
                t,
                mean,
                stderr,
                count,
                degenerate,
                layer in collapsed,
            )
        )
  table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
  table["layer"] = pd.Categorical(
      table["layer"], categories=layers, ordered=True
  )
  table["metric"] = pd.Categorical(
      table["metric"],
      categories=[m for m in METRICS if m in record],
      ordered=True,
  )
  for column in ("mean", "stderr", "t"):
    table[column] = table[column].astype(float)
  return table


@dataclasses.dataclass(frozen=True)
class LinearityResult:
  """What :func:`measure` returns.

  Attributes:
    record: the evaluator's dict (see ``LinearityEvaluator.__call__``), the
      form the training loop logs.
  """

  record: dict

  @functools.cached_property
  def table(self):
    """Tidy ``pandas.DataFrame``, one row per (layer, metric, weight); see
    :func:`results_table`."""
    return results_table(self.record)

  @property
  def layers(self) -> list[str]:
    return list(self.record["layers"])

  @property
  def collapsed_layers(self) -> list[str]:
    """Layers where most tuples are degenerate (dead or collapsed)."""
    return list(self.record["collapsed_layers"])

  def summary(self):
    """One row per layer: each metric averaged over the weights, the
    degenerate tuple count and the collapsed flag (a ``DataFrame``)."""
    table = self.table
    wide = table.pivot_table(
        index="layer",
        columns="metric",
        values="mean",
        aggfunc="mean",
        observed=False,
        dropna=False,
    )
    wide.columns = list(wide.columns.astype(str))
    wide["degenerate"] = [self.record["degenerate"][l] for l in wide.index]
    wide["collapsed"] = [l in self.collapsed_layers for l in wide.index]
    return wide

  def plot(self, metrics: Sequence[str] | str | None = None):
    """Per-layer profile of each metric (average over the weights), one
    panel per metric; returns the ``matplotlib`` figure.

    Error bars are the weights' average standard error, an upper bound of
    the standard error of the average.  A collapsed layer is drawn as a red
    "collapsed" mark at the bottom of the panel, never as a value: its
    metrics are undefined, not zero.
    """
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    if metrics is None:
      metrics = [m for m in METRICS if m in self.record]
    elif isinstance(metrics, str):
      metrics = [metrics]
    layers = self.layers
    collapsed = set(self.collapsed_layers)
    fig, axes = plt.subplots(
        1,
        len(metrics),
        squeeze=False,
        figsize=(max(4.0, 0.5 * len(layers) + 2.5) * len(metrics), 3.8),
    )
    x = np.arange(len(layers))
    for ax, metric in zip(axes[0], metrics):
      stats = self.record[metric]
      with warnings.catch_warnings():
        # nanmean of a layer with no kept tuple: NaN, not drawn, no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        y = np.array(
            [np.nanmean(np.asarray(stats[l]["mean"], float)) for l in layers]
        )
        err = np.array(
            [np.nanmean(np.asarray(stats[l]["stderr"], float)) for l in layers]
        )
      keep = np.array([l not in collapsed for l in layers]) & np.isfinite(y)
      ax.errorbar(  # NaN breaks the line at a layer without a value
          x,
          np.where(keep, y, np.nan),
          yerr=np.where(keep, np.nan_to_num(err), 0.0),
          fmt="o-",
          capsize=3,
      )
      positive = y[keep][y[keep] > 0]
      if positive.size and positive.size == keep.sum():
        ax.set_yscale("log")
      for i, layer in enumerate(layers):
        if layer in collapsed:
          ax.annotate(
              "collapsed",
              (i, 0.02),
              xycoords=("data", "axes fraction"),
              color="red",
              ha="center",
              rotation=90,
              va="bottom",
          )
          ax.axvspan(i - 0.4, i + 0.4, color="red", alpha=0.08)
      ax.set_xticks(x, layers, rotation=45, ha="right")
      ax.set_title(metric)
      ax.set_xlabel("layer (network order)")
    axes[0][0].set_ylabel("mean over tuples (lower = more linear)")
    fig.tight_layout()
    return fig


def _check_images(images, preprocess, mix_at):
  if images.ndim < 1 or images.shape[0] < 2:
    raise ValueError(
        "images must be an array (N, ...) of N >= 2 examples, "
        f"got shape {images.shape}"
    )
  if (jnp.issubdtype(images.dtype, jnp.integer) or images.dtype == bool) and (
      preprocess is None and mix_at is None
  ):
    raise ValueError(
        f"images: integer inputs ({images.dtype}) cannot be mixed as they "
        "are. If they are token ids, pass mix_at='<path of the embedding "
        "module>' (e.g. mix_at='embed') to mix the embeddings instead; if "
        "they are pixel values, pass preprocess= a function mapping them to "
        "floats, or convert them to floats first."
    )


def measure(
    model: Any,
    variables: Any,
    images,
    *,
    num_points: int = 2,
    num_tuples: int = 256,
    layers=None,
    metrics: Sequence[str] = METRICS,
    apply_kwargs: dict | None = None,
    preprocess: Callable | None = None,
    mix_at: str | None = None,
    weights=None,
    grid: Sequence[float] = DEFAULT_GRID,
    num_dirichlet: int = 8,
    batch_size: int = 128,
    key=0,
    logits_layer: str | Sequence[str] | None = "auto",
    degenerate_rtol: float = DEGENERATE_RTOL,
) -> LinearityResult:
  """Layer-wise linearity of any Flax model along mixup paths, in one call.

  Draws ``num_tuples`` tuples of ``num_points`` distinct examples of
  ``images`` (fixed by ``key``), mixes them with ``weights`` and reports,
  for each layer in network order, the mean and standard error over tuples
  of every metric in ``metrics`` (see :mod:`mixlin_jax.linearity.metrics`).

  Args:
    model: a ``flax.linen.Module`` returning anything (logits only, a tuple,
      a dict...): its submodules' outputs are captured with Flax's
      ``capture_intermediates``; or an apply function ``(variables, x) ->
      anything``, whose returned arrays are the layers.
    variables: the model's variables (e.g. ``model.init(...)``).
    images: ``(N, ...)`` examples to draw tuples from (floats; integers
      need ``preprocess`` or ``mix_at``).
    num_points: K, examples per tuple (2 = mixup segments).
    num_tuples: T, tuples to average over.
    layers: which submodule outputs to measure (Module only): None = every
      submodule's ``__call__``; a regex searched in the module path
      (``"block|head"``); a module type or tuple of types (``nn.Dense``); a
      Flax filter ``(module, method_name) -> bool``; ``()`` = none.  The
      model's output is always measured, as layer ``"output"``.
    metrics: subset of ``METRICS``.
    apply_kwargs: extra arguments of the model's ``__call__``, e.g.
      ``{"train": False}``.
    preprocess: optional jittable map of a batch of ``images`` to the
      model's float inputs (e.g. uint8 pixels -> normalized floats), applied
      before mixing.
    mix_at: path of a submodule (e.g. ``"embed"``) whose output is mixed
      instead of the inputs: for integer inputs such as token ids, which
      cannot be mixed.  Layers that complete before it are not reported; the
      model must read its inputs only through that submodule (checked).
    weights: ``(W, K)`` mixing weights on the simplex; default: the ``grid``
      ``(1 - t, t)`` for K = 2, ``num_dirichlet`` Dirichlet(1) draws for
      K > 2.
    batch_size: tuples per forward batch (memory vs speed).
    key: int seed or jax key of the tuples and Dirichlet weights.
    logits_layer: layer(s) holding class logits, whose ``raw_gap`` is taken
      on log-probabilities; "auto" = the model's output ("output") if it is
      a single array; None = none.
    degenerate_rtol: a tuple whose points differ by less than this (squared,
      relative) at a layer is left out there and counted.

  Returns:
    A :class:`LinearityResult` (``.table``, ``.summary()``, ``.plot()``,
    ``.record``).  Compiles once per (model, shapes, options): measuring the
    same model again, even through a new wrapper function, reuses it.
    The compiled programs also go to the persistent cache
    (:mod:`mixlin_jax.jax_cache`), so a new process or notebook kernel
    reuses them too.
  """
  jax_cache.enable()
  reps = reps_lib.Representations.of_model(
      model, layers=layers, apply_kwargs=apply_kwargs, mix_at=mix_at
  )
  if not isinstance(images, jax.Array):  # a transfer, not a compiled copy
    images = jax.device_put(np.asarray(images))
  _check_images(images, preprocess, mix_at)
  if mix_at is not None:
    if preprocess is not None:
      raise ValueError(
          "preprocess: not supported together with mix_at "
          "(the mixed points are the mix_at layer's outputs)"
      )
    tokens = images
    images = jax.jit(reps.embed)(variables, tokens)
    reps = reps.with_tokens(tokens.shape[1:], tokens.dtype)
    _check_reads_inputs_only_through(reps, variables, tokens, images)
  elif preprocess is not None:
    out = jax.eval_shape(
        preprocess, jax.ShapeDtypeStruct((2,) + images.shape[1:], images.dtype)
    )
    if not (
        isinstance(out, jax.ShapeDtypeStruct)
        and jnp.issubdtype(out.dtype, jnp.floating)
    ):
      raise ValueError(
          f"preprocess must map images to a float array, got {out}"
      )
  if logits_layer == "auto":
    logits_layers = None  # the evaluator's default
  elif logits_layer is None:
    logits_layers = ()
  elif isinstance(logits_layer, str):
    logits_layers = (logits_layer,)
  else:
    logits_layers = tuple(logits_layer)
  evaluator = LinearityEvaluator(
      reps,
      images,
      num_points=num_points,
      num_tuples=num_tuples,
      batch_size=batch_size,
      key=key,
      grid=grid,
      num_dirichlet=num_dirichlet,
      weights=weights,
      metrics=metrics,
      preprocess=preprocess,
      logits_layers=logits_layers,
      degenerate_rtol=degenerate_rtol,
  )
  return LinearityResult(evaluator(variables))


def _check_reads_inputs_only_through(reps, variables, tokens, embedded):
  """With ``mix_at``, the model runs on placeholder inputs and the mixed
  layer's output is substituted; that is only right if the model reads its
  inputs through that layer alone.  Compares both ways on two examples."""
  mixed = jax.jit(reps)(variables, embedded[:2])
  plain = jax.jit(reps.unmixed())(variables, tokens[:2])
  for name, a in mixed.items():
    if not np.allclose(
        np.asarray(a, np.float32),
        np.asarray(plain[name], np.float32),
        rtol=1e-4,
        atol=1e-5,
    ):
      raise ValueError(
          f"mix_at={reps.mix_at!r}: layer {name!r} differs when the model "
          "gets its inputs only through that submodule: the model also "
          "reads its inputs elsewhere (e.g. a padding mask), so mixing there "
          "is not defined. Mix at a submodule that sees all of the input."
      )
