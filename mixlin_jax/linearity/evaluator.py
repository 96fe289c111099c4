"""Streaming evaluation of the linearity metrics over fixed tuples of a split.

One jitted computation per call: a ``lax.scan`` over tuple batches that
gathers the tuple images on device, runs the metrics' core
(:func:`~mixlin_jax.linearity.metrics.stacked_tuple_values`) and merges (count,
mean, M2) per metric, layer and weight, leaving out degenerate tuples; one
host transfer per call.  The jitted function is module level with the model
as a static argument that compares by value, so every evaluator (and every
``measure`` call) with an equal model, equal options and equal shapes shares
one compilation, whatever function object wraps the model.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mixlin_jax.linearity import representations as reps_lib
from mixlin_jax.linearity.metrics import (
    DEGENERATE_RTOL,
    METRICS,
    check_metrics,
    forward_points,
    stacked_tuple_values,
)
from mixlin_jax.linearity.sampling import (
    DEFAULT_GRID,
    check_weights,
    draw_tuples,
    mixing_weights,
)

__all__ = [
    "BATCH_DEPENDENCE_RTOL",
    "COLLAPSED_FRACTION",
    "LinearityEvaluator",
    "default_logits_layers",
]

#: A layer is flagged collapsed when more than this fraction of the tuples
#: is degenerate there (its points indistinguishable): "most tuples".
COLLAPSED_FRACTION = 0.5

#: Largest relative difference (in norm) allowed between an example's
#: representations computed alone and inside a batch.  Float reassociation
#: across batch sizes gives ~1e-6 (float32) to ~1e-3 (bfloat16); BatchNorm
#: in training mode or dropout give O(1).
BATCH_DEPENDENCE_RTOL = 1e-2


def default_logits_layers(names: Sequence[str]) -> tuple[str, ...]:
  """Layers taken to hold class logits: this project's ``"NN_logits"``
  naming convention, or a model's own output named ``"output"``."""
  return tuple(
      n
      for n in names
      if n.split("_", 1)[-1] == "logits" or n == reps_lib.OUTPUT
  )


def _merge_stats(n, mean, m2, values, mask, nb):
  """Chan et al. parallel update of (count, mean, M2) with a masked batch.

  values: (R, B); mask: (R, B) bool, the values kept (the tangent residual
  leaves out a tuple at some path parameters only); nb: (R,) float32, the
  kept values per row (``mask``'s row sums, counted with the evaluator's
  other counts in one reduction); n: (R,) counts so far.  Numerically
  stable, unlike running sums of v and v^2 in float32 (whose difference
  cancels when the spread is small relative to the mean).
  """
  safe = jnp.where(mask, values, 0.0)
  bmean = jnp.sum(safe, axis=-1) / jnp.maximum(nb, 1.0)
  bm2 = jnp.sum(
      jnp.where(mask, jnp.square(values - bmean[:, None]), 0.0), axis=-1
  )
  tot = jnp.maximum(n + nb, 1.0)
  delta = bmean - mean
  return (
      n + nb,
      mean + delta * (nb / tot),
      m2 + bm2 + jnp.square(delta) * (n * nb / tot),
  )


def _on_device(a):
  """``a`` as a device array with JAX's dtype (float64 -> float32 without
  x64), copied by a transfer: ``jnp.asarray`` of a host array compiles a
  small program of its own, one per shape, on a first call."""
  return a if isinstance(a, jax.Array) else jax.device_put(np.asarray(a))


@contextlib.contextmanager
def _collector_paused():
  """Python's cyclic garbage collector off while the program is traced,
  compiled and dispatched (restored after, never left off).  Tracing makes
  many short-lived objects, and each collection walks every object JAX
  and the model hold: on the benchmark's small model that was 42
  collections and about 0.09 s of a 1.1 s first call.  Nothing is
  waited for inside, so a call that compiles nothing stays short."""
  was_enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if was_enabled:
      gc.enable()


def _gather(images, idx, preprocess):
  x = images[idx]
  return preprocess(x) if preprocess is not None else x.astype(jnp.float32)


def _batch_dependence(reps, variables, images, tuples, preprocess):
  """Relative difference of one example's representations computed alone
  and last in a batch with the other points of its tuple (0 for a model
  whose examples do not interact).  Last, not first: a layer that depends
  on the position in the batch (dropout with a fixed key) differs there."""
  first = tuples[0, 0]
  together = reps(variables, _gather(images, first[::-1], preprocess))
  alone = reps(variables, _gather(images, first[:1], preprocess))
  worst = jnp.zeros((), jnp.float32)
  for name, a in alone.items():
    a = a[0].astype(jnp.float32)
    b = together[name][-1].astype(jnp.float32)
    rel = jnp.sqrt(
        jnp.sum(jnp.square(a - b)) / jnp.maximum(jnp.sum(jnp.square(b)), 1e-30)
    )
    worst = jnp.maximum(worst, rel)
  return worst


def _constrain(batch_sharding):
  if batch_sharding is None:
    return None
  return functools.partial(
      lax.with_sharding_constraint, shardings=batch_sharding
  )


def _rows_per_metric(metrics, num_weights, num_path):
  """Rows of each metric's statistics: one per weight vector, except the
  tangent residual for K > 2, one per path parameter (``num_path``)."""
  return {
      m: num_path if (m == "tangent_residual" and num_path) else num_weights
      for m in metrics
  }


#: A (tuple, row) left out of a metric's statistics carries this value:
#: every metric is >= 0 (ratios of squared norms, a norm), so one array holds
#: values and masks (a NaN value, e.g. from NaN activations, stays in and
#: makes the mean NaN, as it should).
_LEFT_OUT = -1.0


def _stacked(out, layers):
  """A batch's values of every (metric, layer) as one array, rows ordered
  by metric, then layer, then weight, with the masks the statistics need.

  ``out``: :func:`~mixlin_jax.linearity.metrics.stacked_tuple_values`.
  Returns ``(values (S, B), left out at one row or more (M * L, B), tuple
  degenerate (L, B))``; ``values`` is ``_LEFT_OUT`` where a tuple is
  degenerate (left out of that row).  Merging and finishing the
  statistics of these costs a handful of XLA kernels; kept as one leaf
  per (metric, layer), they were hundreds of tiny kernels, and a
  separate mask array was a second concatenation kernel as large as the
  values'.
  """
  traced = tuple(name for name, _, _ in out["layers"])
  if traced != tuple(layers):  # the host splits the rows by ``layers``
    raise ValueError(
        f"internal: layers traced {traced} differ from those bound {layers}"
    )
  blocks = []  # (L, R, B) per metric
  for m, v in out["values"].items():
    d = out["degenerate"][m]  # (L, B) or (L, R, B)
    if d.ndim == 2:
      d = d[:, None]
    blocks.append(jnp.where(d, _LEFT_OUT, v.astype(jnp.float32)))
  # A tuple left out at one path parameter or more counts once.  The
  # blocks are concatenated as they are and flattened to rows after:
  # flattening each first (its rows a slice of the sums) made XLA's
  # concatenation kernel twice the machine code.
  if len({b.shape for b in blocks}) == 1:
    stacked = blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks)
    values = stacked.reshape((-1, stacked.shape[-1]))
    any_rows = jnp.any(stacked == _LEFT_OUT, axis=1)
  else:  # K > 2: W and G rows differ
    values = jnp.concatenate([b.reshape((-1, b.shape[-1])) for b in blocks])
    any_rows = jnp.concatenate(
        [jnp.any(b == _LEFT_OUT, axis=1) for b in blocks]
    )
  return values, any_rows, out["tuple_degenerate"]


@functools.partial(
    jax.jit,
    static_argnames=(
        "reps",
        "preprocess",
        "metrics",
        "layers",
        "logits_layers",
        "degenerate_rtol",
        "batch_sharding",
        "replicated",
    ),
)
def _evaluate(
    variables,
    images,
    tuples,
    mask,
    weights,
    tangent_t,
    *,
    reps,
    preprocess,
    metrics,
    layers,
    logits_layers,
    degenerate_rtol,
    batch_sharding,
    replicated,
):
  """All tuple batches in one ``lax.scan``; statistics stay on device.

  The statistics of every (metric, layer, weight) are rows of one array
  (see :func:`_stacked`), split by the host in the order of ``layers``;
  their shapes are known from the static arguments, so the model is traced
  once (in the scan body), not a second time for the carry's shapes.
  """
  constrain = _constrain(batch_sharding)
  _, B, K = tuples.shape
  # With the tangent residual, batch dependence is checked inside the
  # forwards the metrics run anyway, on probe tuples appended to each batch
  # (see ``stacked_tuple_values``): a forward of its own costs as much XLA
  # compile time as the model's forward.
  probes = 0
  if "tangent_residual" in metrics:
    probes = 1 if batch_sharding is None else batch_sharding.mesh.size

  def batch_values(idx):
    if probes:  # K copies of the batch's first example
      idx = jnp.concatenate([idx, jnp.broadcast_to(idx[:1, :1], (probes, K))])
    idx = idx.reshape(-1)
    if constrain is not None:  # each device gathers only its tuples
      idx = constrain(idx)
    x = _gather(images, idx, preprocess)
    x = x.reshape((B + probes, K) + x.shape[1:])
    if constrain is not None:
      x = constrain(x)
    out = stacked_tuple_values(
        reps,
        variables,
        x,
        weights,
        tangent_t,
        metrics,
        logits_layers=logits_layers,
        degenerate_rtol=degenerate_rtol,
        constrain=constrain,
        probe_tuples=probes,
    )
    return _stacked(out, layers), out["batch_dependence"]

  rows = _rows_per_metric(
      metrics, weights.shape[0], 0 if tangent_t is None else tangent_t.shape[0]
  )
  num_rows = len(layers) * sum(rows.values())
  zeros = jnp.zeros((num_rows,), jnp.float32)
  init = (
      (zeros, zeros, zeros),
      jnp.zeros((len(metrics) * len(layers),), jnp.int32),
      jnp.zeros((len(layers),), jnp.int32),
      jnp.zeros((), jnp.float32),
  )

  def body(carry, inp):
    (n, mean, m2), degenerate, tuple_degenerate, dependence = carry
    idx, valid = inp
    (values, any_rows, tuple_deg), batch_dep = batch_values(idx)
    kept = valid & (values != _LEFT_OUT)
    # Every count of the batch in one reduction (float32 sums of at most B
    # ones are exact): as separate integer sums they were three times
    # three small kernels to compile.
    counts = jnp.sum(
        jnp.concatenate([kept, valid & any_rows, valid & tuple_deg]),
        axis=-1,
        dtype=jnp.float32,
    )
    nb, left_out, tuple_left_out = jnp.split(
        counts, [num_rows, num_rows + degenerate.shape[0]]
    )
    if batch_dep is not None:
      dependence = jnp.maximum(dependence, batch_dep)
    return (
        _merge_stats(n, mean, m2, values, kept, nb),
        degenerate + left_out.astype(jnp.int32),
        tuple_degenerate + tuple_left_out.astype(jnp.int32),
        dependence,
    ), None

  final, _ = lax.scan(body, init, (tuples, mask))
  (n, mean, m2), degenerate, tuple_degenerate, dependence = final
  if not probes:
    dependence = _batch_dependence(reps, variables, images, tuples, preprocess)
  # Mean over no tuple is undefined (NaN); so is the stderr = std(ddof=1) /
  # sqrt(n) of fewer than two.
  result = {
      "count": n,
      "mean": jnp.where(n > 0, mean, jnp.nan),
      "stderr": jnp.where(
          n > 1, jnp.sqrt(m2 / jnp.maximum(n - 1, 1.0) / n), jnp.nan
      ),
      "degenerate": degenerate,
      "tuple_degenerate": tuple_degenerate,
      "batch_dependence": dependence,
  }
  if replicated is not None:
    result = lax.with_sharding_constraint(result, replicated)
  return result


@functools.partial(
    jax.jit, static_argnames=("reps", "preprocess", "metrics", "batch_sharding")
)
def _forward_floor(
    variables,
    images,
    tuples,
    weights,
    tangent_t,
    *,
    reps,
    preprocess,
    metrics,
    batch_sharding,
):
  """Only the forward passes of :func:`_evaluate`, for the benchmark.

  The same scan, gather, preprocessing, input mixing and forwards (the
  originals, the mixtures, the tangent path points and the JVP at x_1, all
  batched as in the metrics); each layer is reduced to one number so that
  nothing is dead code, and the metrics' arithmetic and statistics are left
  out.  Its run time is the floor the metrics are measured against.
  """
  constrain = _constrain(batch_sharding)
  _, B, K = tuples.shape

  def body(total, idx):
    idx = idx.reshape(-1)
    if constrain is not None:
      idx = constrain(idx)
    x = _gather(images, idx, preprocess)
    x = x.reshape((B, K) + x.shape[1:])
    if constrain is not None:
      x = constrain(x)
    _, h, r, jd, hp, _, _ = forward_points(
        reps, variables, x, weights, tangent_t, metrics, constrain
    )
    for a in jax.tree.leaves((h, r, jd, hp)):
      total = total + jnp.sum(a)
    return total, None

  total, _ = lax.scan(body, jnp.zeros((), jnp.float32), tuples)
  return total


class _Program:
  """The evaluator's jitted computation with its static arguments bound;
  ``lower`` exposes the compiled program (for inspection in tests)."""

  def __init__(self, fn, **static):
    self._fn = fn
    self._static = static

  def __call__(self, *args):
    return self._fn(*args, **self._static)

  def lower(self, *args):
    return self._fn.lower(*args, **self._static)


class LinearityEvaluator:
  """Streams the linearity metrics over fixed tuples of an evaluation split.

  Tuples and weights are drawn once, in ``__init__``, from ``key`` (its
  tuple and weight streams, see
  :func:`~mixlin_jax.linearity.sampling.host_rng`), so every call -- every
  epoch, every run with the same configuration -- evaluates the same
  tuples and weights.
  ``__call__`` is one jitted computation (see the module docstring); the
  last partial batch is padded (with copies of the first tuple) and masked
  out.  Tuples degenerate at a layer (see
  :mod:`~mixlin_jax.linearity.metrics`) are left out of that layer's
  normalized metrics and counted.

  Args:
    apply_fn: ``apply_fn(variables, x) -> (logits, {layer: (N, ...)})``
      (layers sorted by name), or a
      :class:`~mixlin_jax.linearity.representations.Representations` for
      any other model.
    images: evaluation split ``(N, *input_shape)`` (uint8 or float); kept
      on device.
    num_points: K, points per tuple (2 = mixup segments).
    num_tuples: number of tuples T.
    batch_size: tuples per scan step; a forward then has about
      ``batch_size * (K + W)`` examples (plus the path points for K > 2).
    key: jax key or int seed.
    grid: t values for K = 2 weights and for the K > 2 tangent path.
    num_dirichlet: number of weight vectors for K > 2.
    weights: explicit ``(W, K)`` weights on the simplex instead of ``grid``
      / ``num_dirichlet``.
    metrics: subset of :data:`~mixlin_jax.linearity.metrics.METRICS`.
    preprocess: optional jittable ``(N, ...) uint8 -> float`` normalization,
      applied to the gathered originals before mixing.
    logits_layers: layers holding class logits (``raw_gap`` compares their
      log-probabilities); default :func:`default_logits_layers`.
    degenerate_rtol: see :mod:`~mixlin_jax.linearity.metrics`.
    mesh: optional ``jax.sharding.Mesh`` (e.g. the training mesh, which may
      span several processes).  Then the constant inputs are replicated on
      it, every tuple batch and every forward batch is sharded along the
      batch dimension over all its axes, and the result is replicated, so
      each device computes ``1 / mesh.size`` of every forward.  The values
      do not depend on the mesh (up to float reassociation).  Without a
      mesh, everything runs where jit puts it (one device).
  """

  def __init__(
      self,
      apply_fn: Callable,
      images,
      *,
      num_points: int,
      num_tuples: int,
      batch_size: int,
      key,
      grid: Sequence[float] = DEFAULT_GRID,
      num_dirichlet: int = 8,
      weights=None,
      metrics: Sequence[str] = METRICS,
      preprocess: Callable | None = None,
      logits_layers: Sequence[str] | None = None,
      degenerate_rtol: float = DEGENERATE_RTOL,
      mesh: jax.sharding.Mesh | None = None,
  ):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.reps = reps_lib.as_representations(apply_fn)
    self.metrics = check_metrics(metrics)
    self.images = _on_device(images)
    self.num_points = int(num_points)
    self.num_tuples = int(num_tuples)
    self.degenerate_rtol = float(degenerate_rtol)
    self._logits_layers = (
        None if logits_layers is None else tuple(logits_layers)
    )
    self.tuples = draw_tuples(
        key, self.images.shape[0], self.num_tuples, self.num_points
    )
    if weights is None:
      self.weights = mixing_weights(self.num_points, grid, num_dirichlet, key)
    else:
      self.weights = check_weights(weights, self.num_points)
    if self.num_points == 2:
      self.tangent_t = self.weights[:, 1].copy()
    else:
      self.tangent_t = np.asarray(grid, np.float32).reshape(-1)
    self.batch_size = min(int(batch_size), self.num_tuples)
    nb = math.ceil(self.num_tuples / self.batch_size)
    pad = nb * self.batch_size - self.num_tuples
    padded = np.concatenate(
        [self.tuples, np.repeat(self.tuples[:1], pad, axis=0)]
    ).reshape(nb, self.batch_size, self.num_points)
    mask = (np.arange(nb * self.batch_size) < self.num_tuples).reshape(
        nb, self.batch_size
    )
    self._tuples_dev = _on_device(padded)
    self._mask_dev = _on_device(mask)
    self._weights_dev = _on_device(self.weights)
    self._tangent_dev = (
        None if self.num_points == 2 else _on_device(self.tangent_t)
    )
    batch_sharding = replicated = None
    if mesh is not None:
      replicated = jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec()
      )
      batch_sharding = jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec(mesh.axis_names)
      )

      def place(a):  # host values, identical on every process -> replicated
        if a is None or (
            isinstance(a, jax.Array)
            and a.sharding.device_set == replicated.device_set
        ):
          return a
        return jax.make_array_from_process_local_data(replicated, np.asarray(a))

      self.images = place(images)
      self._tuples_dev = place(padded)
      self._mask_dev = place(mask)
      self._weights_dev = place(self.weights)
      self._tangent_dev = place(
          None if self.num_points == 2 else self.tangent_t
      )
    self._preprocess = (
        None if preprocess is None else reps_lib.SameComputation(preprocess)
    )
    self._batch_sharding = batch_sharding
    self._replicated = replicated
    self._run = None  # bound at the first call, once the layers are known
    self._layers_key = None

  # -- layers ---------------------------------------------------------------

  def input_spec(self) -> jax.ShapeDtypeStruct:
    """Shape and dtype of one preprocessed example batch (batch of 1)."""
    one = jax.ShapeDtypeStruct(
        (1,) + tuple(self.images.shape[1:]), self.images.dtype
    )
    return jax.eval_shape(
        lambda u: _gather(u, jnp.zeros((1,), jnp.int32), self._preprocess), one
    )

  def layer_specs(self, variables) -> tuple:
    """The layers measured, in network order (validated)."""
    return reps_lib.layer_specs(self.reps, variables, self.input_spec())

  def _bind(self, variables):
    specs = self.layer_specs(variables)
    names = tuple(s.name for s in specs)
    if self._logits_layers is None:
      logits = default_logits_layers(names)
    else:
      logits = self._logits_layers
      missing = [n for n in logits if n not in names]
      if missing:
        raise ValueError(
            f"logits_layers: {missing} are not layers of the "
            f"model; its layers are {list(names)}"
        )
    self.layers = names
    self.logits_layers = tuple(n for n in names if n in logits)
    static = dict(
        reps=self.reps, preprocess=self._preprocess, metrics=self.metrics
    )
    self._run = _Program(
        _evaluate,
        **static,
        layers=names,
        logits_layers=self.logits_layers,
        degenerate_rtol=self.degenerate_rtol,
        batch_sharding=self._batch_sharding,
        replicated=self._replicated,
    )
    self._floor = _Program(
        _forward_floor, **static, batch_sharding=self._batch_sharding
    )

  def _ensure_bound(self, variables):
    key = jax.tree.structure(variables), tuple(
        (np.shape(a), jnp.result_type(a)) for a in jax.tree.leaves(variables)
    )
    if self._run is None or key != self._layers_key:
      self._bind(variables)
      self._layers_key = key

  # -- evaluation -----------------------------------------------------------

  def forward_floor(self, variables) -> float:
    """Runs only the forward passes the metrics need (see
    :func:`_forward_floor`); blocks; for timing against ``__call__``."""
    self._ensure_bound(variables)
    return float(
        self._floor(
            variables,
            self.images,
            self._tuples_dev,
            self._weights_dev,
            self._tangent_dev,
        )
    )

  def __call__(self, variables) -> dict:
    """Returns nested python values (the per-epoch record's ``linearity``)::

        {"weights": [[w_1..w_K], ...], "layers": [names, network order],
         "tangent_t": [t, ...],          # only with tangent_residual
         "num_tuples": T,
         metric: {layer: {"mean": [R floats], "stderr": [R floats],
                          "count": n, "degenerate": d}},
         "tangent_residual": {layer: {..., "count_per_weight": [R ints]}},
         "degenerate": {layer: d_layer},
         "collapsed_layers": [names],
         "degenerate_rtol": rtol}

    ``mean``/``stderr`` are over the ``count`` tuples that are not
    degenerate at the layer (NaN when there is none, stderr NaN below two);
    ``degenerate`` (per metric) how many were left out; for ``raw_gap``
    none is.  The tangent residual also leaves out a tuple at a single
    ``t`` where the path point is indistinguishable from ``x_1`` (see
    :mod:`~mixlin_jax.linearity.metrics`): its ``mean[i]``/``stderr[i]``
    are over ``count_per_weight[i]`` tuples, ``count`` are the tuples kept
    at every ``t`` and ``degenerate`` those left out at one or more
    (``count + degenerate == num_tuples`` for every metric).
    ``"degenerate"`` (top level) counts, per layer, the tuples whose K
    points are indistinguishable there; ``"collapsed_layers"`` the
    layers where that is more than ``COLLAPSED_FRACTION`` of the tuples
    (a dead or collapsed layer: not "perfectly linear").  For K > 2 the
    tangent residual lists are indexed by ``tangent_t``.

    Raises ValueError if one example's representations depend on the other
    examples in its batch (BatchNorm in training mode, dropout).
    """
    with _collector_paused():
      self._ensure_bound(variables)
      stats = self._run(
          variables,
          self.images,
          self._tuples_dev,
          self._mask_dev,
          self._weights_dev,
          self._tangent_dev,
      )
    stats = jax.device_get(stats)  # the single host transfer
    dependence = float(stats["batch_dependence"])
    if not dependence <= BATCH_DEPENDENCE_RTOL:
      raise ValueError(
          "model: an example's representations change when it is evaluated "
          f"together with other examples (relative difference "
          f"{dependence:.3g}): BatchNorm in training mode or dropout enabled?"
          " Apply the model in inference mode, e.g. apply_kwargs={'train': "
          "False}."
      )
    out: dict = {
        "weights": self.weights.astype(float).tolist(),
        "layers": list(self.layers),
    }
    if "tangent_residual" in self.metrics:
      out["tangent_t"] = self.tangent_t.astype(float).tolist()
    out["num_tuples"] = self.num_tuples
    rows = _rows_per_metric(
        self.metrics,
        len(self.weights),
        len(self.tangent_t) if self.num_points > 2 else 0,
    )
    start = 0
    for i, m in enumerate(self.metrics):
      out[m] = {}
      for j, name in enumerate(self.layers):
        sl = slice(start, start + rows[m])  # the rows of (m, name)
        start = sl.stop
        left_out = int(stats["degenerate"][i * len(self.layers) + j])
        out[m][name] = {
            "mean": np.asarray(stats["mean"][sl], np.float64).tolist(),
            "stderr": np.asarray(stats["stderr"][sl], np.float64).tolist(),
            "count": self.num_tuples - left_out,
            "degenerate": left_out,
        }
        if m == "tangent_residual":  # kept tuples differ from t to t
          out[m][name]["count_per_weight"] = [
              int(c) for c in stats["count"][sl]
          ]
    out["degenerate"] = {
        name: int(stats["tuple_degenerate"][j])
        for j, name in enumerate(self.layers)
    }
    out["collapsed_layers"] = [
        name
        for name in self.layers
        if out["degenerate"][name] > COLLAPSED_FRACTION * self.num_tuples
    ]
    out["degenerate_rtol"] = self.degenerate_rtol
    return out
