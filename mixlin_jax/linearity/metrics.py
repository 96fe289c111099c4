"""Layer-wise linearity of learned representations along mixup paths.

The question this module answers: if a network was trained with mixup (its
*output* was asked to be linear along segments between training examples),
how linear are its *intermediate representations* along those segments, layer
by layer?

Definitions
-----------
For layer ``l`` with representation ``h_l`` (flattened per example), a tuple of
``K`` examples ``x_1..x_K`` and mixing weights ``w`` on the simplex::

    m_l = sum_i w_i h_l(x_i)        # mixture of representations
    r_l = h_l(sum_i w_i x_i)        # representation of the mixture

1. ``interp_error`` (primary)::

       ||r_l - m_l||^2 / sum_i w_i ||h_l(x_i) - m_l||^2

   The numerator is the failure of ``h_l`` to commute with mixing; it is zero
   for every affine map, because affine maps preserve convex combinations.
   The denominator is the weighted spread of the ``K`` representations around
   their mixture (the "size" of the simplex the tuple spans in layer ``l``).
   Dividing by it makes the value invariant to scaling, shifting and rotating
   ``h_l`` (both terms transform identically), hence comparable across layers
   whose widths and scales differ wildly.  It is computed through the
   identity ``sum_i w_i ||h_i - m||^2 = 1/2 sum_{i,j} w_i w_j ||h_i - h_j||^2``,
   so the pairwise distances are computed once per tuple, independently of
   the number of weight vectors, and without the cancellation of the
   ``E||h||^2 - ||m||^2`` form.

2. ``relative_error``: ``||r_l - m_l||^2 / ||m_l||^2``.  Same numerator, but
   normalized by the size of the representation rather than by the size of
   the tuple; it is *not* shift invariant (a large common offset makes it
   small) and is reported as a secondary, more familiar quantity.

3. ``tangent_residual`` (local linearity along the path): with
   ``x(t) = x_1 + t (x_2 - x_1)``::

       ||h(x(t)) - h(x_1) - t J_h(x_1)(x_2 - x_1)||^2 / ||h(x(t)) - h(x_1)||^2

   i.e. how much of the displacement from ``x_1`` is *not* explained by the
   first-order Taylor expansion at ``x_1``.  Zero for affine maps, invariant
   to scaling/shifting/rotating ``h``.  ``interp_error`` says whether the
   chord is preserved; this says whether the map is linear along the path.
   ``J_h(x_1)(x_2 - x_1)`` is a Jacobian-vector product, computed for *all*
   layers with a single ``jax.jvp`` (forward mode) of the activations function.
   For ``K = 2`` the path parameter is ``t = w_2`` for each weight vector
   ``w = (1 - t, t)``, so the path points are exactly the mixtures and their
   forward pass is reused.  For ``K > 2`` the path uses the tuple's first two
   points and the ``t`` values of the ``K = 2`` grid (``tangent_t``); the
   Dirichlet weights have no natural one-dimensional parameter, and using the
   same ``t`` grid keeps the tangent residual comparable between ``K = 2``
   and ``K > 2`` runs.  Its first axis is therefore ``len(tangent_t)``, not
   the number of weight vectors, when ``K > 2``.

Guard.  Every ratio is ``num / max(den, EPS_REL * scale, TINY)``, where
``scale`` is the second moment of the representations involved (for the
interpolation/relative errors ``sum_i w_i ||h_i||^2``; for the tangent
residual ``||h(x_1)||^2 + ||h(x(t))||^2``).  A denominator that is below
``EPS_REL`` of the scale means the points are indistinguishable at that layer
(e.g. a constant or dead layer); then the numerator is normally zero too and
the value is 0 (``0 / floor``) instead of NaN.  ``EPS_REL`` is far below any
spread real, distinct examples produce, so it never touches a regular tuple.

Sampling.  Weights: for ``K = 2`` a fixed grid ``t in (0.1, ..., 0.9)`` gives
``w = (1 - t, t)``; for ``K > 2`` a fixed set of Dirichlet(1) draws (uniform on
the simplex) from a fixed key.  Tuples: drawn once from a fixed key over the
evaluation split, ``K`` distinct indices each, identical for every epoch and
every run with the same configuration, so curves over training measure the
network, not resampling noise.  Each reported value is the mean over tuples of
the per-tuple ratio, with its standard error ``std(ddof=1) / sqrt(n)``.

Layers may compute in bf16; all metrics are computed in float32 (and the
naive reference in float64).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "METRICS",
    "DEFAULT_GRID",
    "EPS_REL",
    "TINY",
    "mixing_weights",
    "draw_tuples",
    "per_tuple_metrics",
    "naive_per_tuple_metrics",
    "LinearityEvaluator",
]

METRICS = ("interp_error", "relative_error", "tangent_residual")

#: Mixing coefficients ``t`` of the K = 2 grid, ``w = (1 - t, t)``; also the
#: path parameters of the tangent residual for K > 2.
DEFAULT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

#: Denominators below ``EPS_REL * scale`` (scale = second moment of the
#: representations involved) are treated as degenerate; see module docstring.
EPS_REL = 1e-10
#: Absolute floor so an all-zero layer gives ``0 / TINY = 0``, not NaN.
TINY = float(np.finfo(np.float32).tiny)

_HIGHEST = (
    lax.Precision.HIGHEST
)  # no TF32/bf16 passes in the tiny mixing contractions


# ---------------------------------------------------------------------------
# Sampling


def _as_key(key, default_seed: int = 0):
  """Accepts a jax key (typed or raw uint32), an int seed, or None."""
  if key is None:
    return jax.random.key(default_seed)
  if isinstance(key, (int, np.integer)):
    return jax.random.key(int(key))
  return key


def _check_metrics(metrics) -> tuple[str, ...]:
  metrics = tuple(metrics)
  unknown = [m for m in metrics if m not in METRICS]
  if unknown or not metrics:
    raise ValueError(
        f"metrics must be a non-empty subset of {METRICS}, got {metrics}"
    )
  # Canonical order, so the jit cache key does not depend on the caller's order.
  return tuple(m for m in METRICS if m in metrics)


def mixing_weights(
    num_points: int,
    grid: Sequence[float] = DEFAULT_GRID,
    num_dirichlet: int = 8,
    key=None,
) -> np.ndarray:
  """Fixed mixing weights, float32 array ``(W, num_points)``, rows on the simplex.

  ``num_points == 2``: one row ``(1 - t, t)`` per ``t`` in ``grid`` (``key``
  unused), the usual mixup segment.  ``num_points > 2``: ``num_dirichlet``
  draws from Dirichlet(1, ..., 1), i.e. uniform on the simplex, from ``key``
  (default: ``jax.random.key(0)``) so that the same configuration always
  evaluates the same weights.  Returned as numpy: they are constants of the
  evaluation, not traced values.
  """
  if num_points < 2:
    raise ValueError(f"num_points must be >= 2, got {num_points}")
  if num_points == 2:
    t = np.asarray(grid, dtype=np.float64).reshape(-1)
    if t.size == 0 or np.any((t < 0) | (t > 1)):
      raise ValueError(f"grid values must lie in [0, 1], got {grid}")
    return np.stack([1.0 - t, t], axis=1).astype(np.float32)
  if num_dirichlet < 1:
    raise ValueError(f"num_dirichlet must be >= 1, got {num_dirichlet}")
  # Dirichlet(1, ..., 1) == normalized i.i.d. Exp(1) variables.  Sampled
  # this way rather than with ``jax.random.dirichlet``, whose gamma sampler
  # takes seconds to compile for every new K, for no benefit at alpha = 1.
  e = jax.random.exponential(
      _as_key(key), (num_dirichlet, num_points), jnp.float32
  )
  w = np.asarray(e, dtype=np.float64)
  w /= w.sum(axis=1, keepdims=True)  # normalize in float64: rows sum to 1
  return w.astype(np.float32)


def draw_tuples(
    key, num_examples: int, num_tuples: int, num_points: int
) -> np.ndarray:
  """``num_tuples`` tuples of ``num_points`` distinct indices, int32 ``(T, K)``.

  Sequential sampling without replacement: the j-th index is uniform over
  the ``N - j`` indices not yet in the tuple (a uniform draw in
  ``[0, N - j)`` mapped past the already chosen ones).  O(T K^2), unlike a
  per-tuple permutation of all N examples.  The order within a tuple is
  random, so "the first two points" used by the K > 2 tangent residual are a
  uniformly random pair.
  """
  n, t, k = int(num_examples), int(num_tuples), int(num_points)
  if k < 2:
    raise ValueError(f"num_points must be >= 2, got {k}")
  if n < k:
    raise ValueError(f"need num_examples >= num_points, got {n} < {k}")
  if t < 1:
    raise ValueError(f"num_tuples must be >= 1, got {t}")
  u = jax.random.randint(
      _as_key(key),
      (t, k),
      0,
      jnp.arange(n, n - k, -1, dtype=jnp.int32),
      dtype=jnp.int32,
  )
  u = np.asarray(u, dtype=np.int64)
  out = np.empty((t, k), dtype=np.int64)
  for j in range(k):  # setup only; k is tiny
    idx = u[:, j].copy()
    prev = np.sort(out[:, :j], axis=1)
    for c in range(j):  # ascending: skip over every chosen index <= idx
      idx += idx >= prev[:, c]
    out[:, j] = idx
  return out.astype(np.int32)


# ---------------------------------------------------------------------------
# Vectorized per-tuple metrics


def _flatten_acts(acts: Mapping[str, jax.Array]) -> dict:
  """``{layer: (N, ...)}`` -> ``{layer: (N, D) float32}``."""
  return jax.tree.map(
      lambda a: jnp.reshape(a, (a.shape[0], -1)).astype(jnp.float32), dict(acts)
  )


def _sqnorm(v):
  return jnp.sum(jnp.square(v), axis=-1)


def _safe_ratio(num, den, scale):
  floor = jnp.maximum(EPS_REL * scale, TINY)
  return num / jnp.maximum(den, floor)


def _layer_metrics(h, r, jd, hp, weights, tangent_t, metrics):
  """Metrics of one layer; traced once per layer via ``jax.tree.map``.

  h: (T, K, D) originals; r: (W, T, D) mixtures (or None); jd: (T, D) JVP
  at x_1 (or None); hp: (G, T, D) path points (or None).
  Returns ``{metric: (W or G, T)}``.
  """
  out = {}
  if r is not None:
    hn = _sqnorm(h)  # (T, K)
    second = jnp.einsum("wk,tk->wt", weights, hn, precision=_HIGHEST)
    m = jnp.einsum("wk,tkd->wtd", weights, h, precision=_HIGHEST)
    num = _sqnorm(r - m)  # (W, T)
    if "interp_error" in metrics:
      pair = _sqnorm(h[:, :, None, :] - h[:, None, :, :])  # (T, K, K)
      den = 0.5 * jnp.einsum(
          "wj,tjk,wk->wt", weights, pair, weights, precision=_HIGHEST
      )
      out["interp_error"] = _safe_ratio(num, den, second)
    if "relative_error" in metrics:
      out["relative_error"] = _safe_ratio(num, _sqnorm(m), second)
  if jd is not None:
    h1 = h[:, 0]  # (T, D)
    diff = hp - h1[None]  # (G, T, D)
    res = diff - tangent_t[:, None, None] * jd[None]
    scale = _sqnorm(h1)[None] + _sqnorm(hp)
    out["tangent_residual"] = _safe_ratio(_sqnorm(res), _sqnorm(diff), scale)
  return out


def _per_tuple_core(
    apply_fn, variables, x, weights, tangent_t, metrics, constrain=None
):
  """Traceable body of :func:`per_tuple_metrics` (shapes are static).

  ``constrain`` (optional, e.g. a sharding constraint) is applied to every
  batch given to ``apply_fn``, so the forwards can be split over devices.
  """
  x = jnp.asarray(x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # mix inputs in >= f32
  T, K = x.shape[:2]
  in_shape = x.shape[2:]
  weights = jnp.asarray(weights, jnp.float32)
  W = weights.shape[0]
  if weights.ndim != 2 or weights.shape[1] != K:
    raise ValueError(f"weights must be (W, {K}), got {weights.shape}")
  want_mix = "interp_error" in metrics or "relative_error" in metrics
  want_tan = "tangent_residual" in metrics

  def acts(z):
    if constrain is not None:
      z = constrain(z)
    return _flatten_acts(apply_fn(variables, z)[1])

  # One plain batched forward for everything except x_1 when the JVP runs
  # (the JVP's primal output *is* h(x_1)): originals, the W*T mixtures and,
  # for K > 2, the G*T path points.
  pieces = []
  x1 = x[:, 0]
  if want_tan:
    h1, jd = jax.jvp(acts, (x1,), (x[:, 1] - x1,))
    pieces.append(("orig", x[:, 1:].reshape((T * (K - 1),) + in_shape)))
  else:
    h1 = jd = None
    pieces.append(("orig", x.reshape((T * K,) + in_shape)))
  need_mix = want_mix or (
      want_tan and K == 2
  )  # K == 2: path points == mixtures
  if need_mix:
    xm = jnp.einsum(
        "wk,tk...->wt...", weights.astype(x.dtype), x, precision=_HIGHEST
    )
    pieces.append(("mix", xm.reshape((W * T,) + in_shape)))
  if want_tan and K > 2:
    tt = jnp.asarray(tangent_t, x.dtype)
    G = tt.shape[0]
    shape_t = (G,) + (1,) * (x.ndim - 1)
    xp = x1[None] + tt.reshape(shape_t) * (x[:, 1] - x1)[None]  # (G, T, ...)
    pieces.append(("path", xp.reshape((G * T,) + in_shape)))

  sizes = [p.shape[0] for _, p in pieces]
  z = (
      pieces[0][1]
      if len(pieces) == 1
      else jnp.concatenate([p for _, p in pieces], axis=0)
  )
  hz = acts(z)
  offsets = np.cumsum([0] + sizes)
  part = {
      name: jax.tree.map(lambda a, s=s, e=e: a[s:e], hz)
      for (name, _), s, e in zip(pieces, offsets[:-1], offsets[1:])
  }

  def originals(rest, first=None):
    D = rest.shape[-1]
    if first is None:
      return rest.reshape(T, K, D)
    return jnp.concatenate([first[:, None], rest.reshape(T, K - 1, D)], axis=1)

  h = (
      jax.tree.map(originals, part["orig"], h1)
      if want_tan
      else jax.tree.map(originals, part["orig"])
  )
  r = (
      jax.tree.map(lambda a: a.reshape(W, T, -1), part["mix"])
      if need_mix
      else None
  )
  if want_tan:
    if K == 2:
      hp, t_vals = r, weights[:, 1]
    else:
      hp = jax.tree.map(lambda a: a.reshape(G, T, -1), part["path"])
      t_vals = jnp.asarray(tangent_t, jnp.float32)
  else:
    hp, t_vals = None, None

  layers = sorted(h)
  empty = {name: None for name in layers}
  per_layer = jax.tree.map(
      functools.partial(
          _layer_metrics, weights=weights, tangent_t=t_vals, metrics=metrics
      ),
      h,
      r if (r is not None and want_mix) else empty,
      jd if want_tan else empty,
      hp if want_tan else empty,
      is_leaf=lambda v: v is None,
  )
  # {layer: {metric: v}} -> {metric: {layer: v}} (trace-time bookkeeping only)
  return {m: {name: per_layer[name][m] for name in layers} for m in metrics}


_per_tuple_jit = jax.jit(
    _per_tuple_core, static_argnames=("apply_fn", "metrics")
)


def _resolve_tangent_t(num_points: int, weights, tangent_t):
  if num_points == 2:
    return None  # t = w_2, taken from the weights inside the computation
  return np.asarray(
      DEFAULT_GRID if tangent_t is None else tangent_t, np.float32
  ).reshape(-1)


def per_tuple_metrics(
    apply_fn: Callable,
    variables: Any,
    x_tuples,
    weights,
    *,
    tangent_t: Sequence[float] | None = None,
    metrics: Sequence[str] = METRICS,
) -> dict:
  """Per-tuple metric values for every layer, in one jitted computation.

  Args:
    apply_fn: ``apply_fn(variables, x) -> (logits, {layer: (N, ...)})``,
      inference mode, examples independent of each other in the batch.
    variables: model variables (a pytree; traced).
    x_tuples: float ``(T, K, *input_shape)``.
    weights: ``(W, K)`` rows on the simplex (see :func:`mixing_weights`).
    tangent_t: path parameters of the tangent residual, only used for
      ``K > 2`` (default ``DEFAULT_GRID``); for ``K = 2`` ``t = w_2``.
    metrics: subset of :data:`METRICS` (the JVP is skipped without
      ``tangent_residual``).

  Returns:
    ``{metric: {layer: (W, T) float32}}`` (``(len(tangent_t), T)`` for the
    tangent residual when ``K > 2``), device arrays.

  Structure: the K originals are forwarded once per tuple (x_1 through the
  JVP, whose primal is ``h(x_1)``), all W*T mixtures (and, for K > 2, the
  path points) in the same batched forward, and the per-layer arithmetic is
  mapped over the activations dict with ``jax.tree.map`` at trace time.
  ``apply_fn`` is a static jit argument (hashed by identity): pass the same
  function object each time, not a fresh lambda, or every call recompiles.
  """
  metrics = _check_metrics(metrics)
  K = x_tuples.shape[1]
  return _per_tuple_jit(
      apply_fn,
      variables,
      x_tuples,
      weights,
      _resolve_tangent_t(K, weights, tangent_t),
      metrics,
  )


# ---------------------------------------------------------------------------
# Naive reference


def naive_per_tuple_metrics(
    apply_fn: Callable,
    variables: Any,
    x_tuples,
    weights,
    *,
    tangent_t: Sequence[float] | None = None,
    metrics: Sequence[str] = METRICS,
) -> dict:
  """Same values as :func:`per_tuple_metrics`, the obvious way.

  A Python loop over weights (one forward per weight vector, transferred to
  host) and over layers, numpy float64 arithmetic, the interpolation
  denominator computed directly as ``sum_i w_i ||h_i - m||^2`` (not via
  pairwise distances) and the tangent path points forwarded separately even
  for K = 2.  It exists as an independent reference for the tests and as the
  baseline of the benchmark; do not use it for real evaluations.
  """
  metrics = _check_metrics(metrics)
  x = np.asarray(x_tuples, dtype=np.float64)
  w = np.asarray(weights, dtype=np.float64)
  T, K = x.shape[:2]
  in_shape = x.shape[2:]

  def fwd(z):
    acts = apply_fn(variables, jnp.asarray(z, jnp.float32))[1]
    return {
        k: (
            np.asarray(jnp.asarray(v, jnp.float32), np.float64).reshape(
                z.shape[0], -1
            )
        )
        for k, v in acts.items()
    }

  orig = fwd(x.reshape((T * K,) + in_shape))
  layers = sorted(orig)
  h = {name: orig[name].reshape(T, K, -1) for name in layers}
  out = {
      m: {name: np.zeros((w.shape[0], T)) for name in layers} for m in metrics
  }

  def ratio(num, den, scale):
    return num / np.maximum(den, np.maximum(EPS_REL * scale, TINY))

  if "interp_error" in metrics or "relative_error" in metrics:
    for wi in range(w.shape[0]):
      xm = np.zeros((T,) + in_shape)
      for k in range(K):
        xm += w[wi, k] * x[:, k]
      r = fwd(xm)
      for name in layers:
        hl = h[name]
        m = sum(w[wi, k] * hl[:, k] for k in range(K))
        num = ((r[name] - m) ** 2).sum(-1)
        den = sum(w[wi, k] * ((hl[:, k] - m) ** 2).sum(-1) for k in range(K))
        second = sum(w[wi, k] * (hl[:, k] ** 2).sum(-1) for k in range(K))
        if "interp_error" in metrics:
          out["interp_error"][name][wi] = ratio(num, den, second)
        if "relative_error" in metrics:
          out["relative_error"][name][wi] = ratio(num, (m**2).sum(-1), second)

  if "tangent_residual" in metrics:
    ts = (
        w[:, 1]
        if K == 2
        else np.asarray(
            DEFAULT_GRID if tangent_t is None else tangent_t, np.float64
        )
    )
    x1, d = x[:, 0], x[:, 1] - x[:, 0]
    _, jd = jax.jvp(
        lambda z: apply_fn(variables, z)[1],
        (jnp.asarray(x1, jnp.float32),),
        (jnp.asarray(d, jnp.float32),),
    )
    jd = {
        k: np.asarray(jnp.asarray(v, jnp.float32), np.float64).reshape(T, -1)
        for k, v in jd.items()
    }
    out["tangent_residual"] = {name: np.zeros((len(ts), T)) for name in layers}
    for ti, t in enumerate(ts):
      hp = fwd(x1 + t * d)
      for name in layers:
        h1 = h[name][:, 0]
        diff = hp[name] - h1
        res = diff - t * jd[name]
        scale = (h1**2).sum(-1) + (hp[name] ** 2).sum(-1)
        out["tangent_residual"][name][ti] = ratio(
            (res**2).sum(-1), (diff**2).sum(-1), scale
        )
  return out


# ---------------------------------------------------------------------------
# Streaming evaluator


def _merge_stats(n, mean, m2, values, mask):
  """Chan et al. parallel update of (count, mean, M2) with a masked batch.

  values: (W, B); mask: (B,) bool.  Numerically stable, unlike running
  sums of v and v^2 in float32 (whose difference cancels when the spread
  is small relative to the mean).
  """
  nb = jnp.sum(mask).astype(jnp.float32)
  safe = jnp.where(mask[None], values, 0.0)
  bmean = jnp.sum(safe, axis=-1) / jnp.maximum(nb, 1.0)
  bm2 = jnp.sum(
      jnp.where(mask[None], jnp.square(values - bmean[:, None]), 0.0), axis=-1
  )
  tot = jnp.maximum(n + nb, 1.0)
  delta = bmean - mean
  return mean + delta * (nb / tot), m2 + bm2 + jnp.square(delta) * (
      n * nb / tot
  )


def _evaluate(
    apply_fn,
    preprocess,
    metrics,
    variables,
    images,
    tuples,
    mask,
    weights,
    tangent_t,
    *,
    constrain=None,
):
  """All tuple batches in one jitted ``lax.scan``; returns mean/stderr on device."""
  _, B, K = tuples.shape

  def batch_values(idx):
    idx = idx.reshape(-1)
    if constrain is not None:  # each device gathers only its tuples
      idx = constrain(idx)
    x = images[idx]  # on-device gather (B*K, ...)
    x = preprocess(x) if preprocess is not None else x.astype(jnp.float32)
    x = x.reshape((B, K) + x.shape[1:])
    if constrain is not None:
      x = constrain(x)
    return _per_tuple_core(
        apply_fn, variables, x, weights, tangent_t, metrics, constrain
    )

  shapes = jax.eval_shape(batch_values, tuples[0])
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape[:1], jnp.float32), shapes)
  init = (jnp.zeros((), jnp.float32), zeros, zeros)

  def body(carry, inp):
    n, mean, m2 = carry
    idx, msk = inp
    vals = batch_values(idx)
    merged = jax.tree.map(
        lambda a, b, v: _merge_stats(n, a, b, v, msk), mean, m2, vals
    )
    is_pair = lambda v: isinstance(v, tuple)
    new_mean = jax.tree.map(lambda p: p[0], merged, is_leaf=is_pair)
    new_m2 = jax.tree.map(lambda p: p[1], merged, is_leaf=is_pair)
    return (n + jnp.sum(msk).astype(jnp.float32), new_mean, new_m2), None

  (n, mean, m2), _ = lax.scan(body, init, (tuples, mask))
  # stderr = std(ddof=1) / sqrt(n); undefined (NaN) for a single tuple.
  stderr = jax.tree.map(
      lambda s: jnp.where(
          n > 1, jnp.sqrt(s / jnp.maximum(n - 1, 1.0) / n), jnp.nan
      ),
      m2,
  )
  return {"mean": mean, "stderr": stderr}


class LinearityEvaluator:
  """Streams the linearity metrics over fixed tuples of an evaluation split.

  Tuples and weights are drawn once, in ``__init__``, from ``key`` (split
  into a tuple key and a weight key), so every call -- every epoch, every
  run with the same configuration -- evaluates the same tuples and weights.
  ``__call__`` is one jitted computation: a ``lax.scan`` over tuple batches
  that gathers the tuple images from the device-resident ``images``, runs
  :func:`per_tuple_metrics`' body and merges (count, mean, M2) per
  metric/layer/weight on device; the last partial batch is padded (with
  copies of the first tuple) and masked out.  One host transfer per call.
  It is compiled once per variables structure.

  Args:
    apply_fn: ``apply_fn(variables, x) -> (logits, {layer: (N, ...)})``.
    images: evaluation split ``(N, *input_shape)`` (uint8 or float); kept
      on device.
    num_points: K, points per tuple (2 = mixup segments).
    num_tuples: number of tuples T.
    batch_size: tuples per scan step; a forward then has about
      ``batch_size * (K + W)`` examples (plus the path points for K > 2).
    key: jax key or int seed.
    grid: t values for K = 2 weights and for the K > 2 tangent path.
    num_dirichlet: number of weight vectors for K > 2.
    metrics: subset of :data:`METRICS`.
    preprocess: optional jittable ``(N, ...) uint8 -> float`` normalization,
      applied to the gathered originals before mixing.
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
      metrics: Sequence[str] = METRICS,
      preprocess: Callable | None = None,
      mesh: jax.sharding.Mesh | None = None,
  ):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.metrics = _check_metrics(metrics)
    self.images = jnp.asarray(images)
    self.num_points = int(num_points)
    self.num_tuples = int(num_tuples)
    key_tuples, key_weights = jax.random.split(_as_key(key))
    self.tuples = draw_tuples(
        key_tuples, self.images.shape[0], self.num_tuples, self.num_points
    )
    self.weights = mixing_weights(
        self.num_points, grid, num_dirichlet, key_weights
    )
    if self.num_points == 2:
      self.tangent_t = self.weights[:, 1].copy()
    else:
      self.tangent_t = np.asarray(grid, np.float32).reshape(-1)
    self.batch_size = min(int(batch_size), self.num_tuples)
    nb = math.ceil(self.num_tuples / self.batch_size)
    pad = nb * self.batch_size - self.num_tuples
    padded = np.concatenate(
        [self.tuples, np.repeat(self.tuples[:1], pad, axis=0)]
    )
    mask = np.arange(nb * self.batch_size) < self.num_tuples
    self._tuples_dev = jnp.asarray(
        padded.reshape(nb, self.batch_size, self.num_points)
    )
    self._mask_dev = jnp.asarray(mask.reshape(nb, self.batch_size))
    self._weights_dev = jnp.asarray(self.weights)
    self._tangent_dev = (
        None if self.num_points == 2 else jnp.asarray(self.tangent_t)
    )
    constrain, jit_kwargs = None, {}
    if mesh is not None:
      rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      batch = jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec(mesh.axis_names)
      )
      constrain = functools.partial(
          jax.lax.with_sharding_constraint, shardings=batch
      )
      jit_kwargs = {"out_shardings": rep}

      def place(a):  # host values, identical on every process -> replicated
        if a is None or (
            isinstance(a, jax.Array) and a.sharding.device_set == rep.device_set
        ):
          return a
        return jax.make_array_from_process_local_data(rep, np.asarray(a))

      self.images = place(images)
      self._tuples_dev = place(
          padded.reshape(nb, self.batch_size, self.num_points)
      )
      self._mask_dev = place(mask.reshape(nb, self.batch_size))
      self._weights_dev = place(self.weights)
      self._tangent_dev = (
          None if self.num_points == 2 else place(self.tangent_t)
      )
    self._run = jax.jit(
        functools.partial(
            _evaluate, apply_fn, preprocess, self.metrics, constrain=constrain
        ),
        **jit_kwargs,
    )

  def __call__(self, variables) -> dict:
    """Returns nested python floats::

        {"weights": [[w_1..w_K], ...], "layers": [sorted names],
         "tangent_t": [t, ...],          # only with tangent_residual
         "num_tuples": T,
         metric: {layer: {"mean": [W floats], "stderr": [W floats]}}}

    For K > 2 the tangent residual lists are indexed by ``tangent_t``.
    """
    stats = self._run(
        variables,
        self.images,
        self._tuples_dev,
        self._mask_dev,
        self._weights_dev,
        self._tangent_dev,
    )
    stats = jax.device_get(stats)  # the single host transfer
    mean, stderr = stats["mean"], stats["stderr"]
    layers = sorted(mean[self.metrics[0]])
    out: dict = {
        "weights": self.weights.astype(float).tolist(),
        "layers": list(layers),
    }
    if "tangent_residual" in self.metrics:
      out["tangent_t"] = self.tangent_t.astype(float).tolist()
    out["num_tuples"] = self.num_tuples
    for m in self.metrics:
      out[m] = {
          name: {
              "mean": np.asarray(mean[m][name], np.float64).tolist(),
              "stderr": np.asarray(stderr[m][name], np.float64).tolist(),
          }
          for name in layers
      }
    return out
