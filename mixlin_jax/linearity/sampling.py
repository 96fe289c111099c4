"""Which tuples and weights the linearity metrics evaluate.

Both are drawn once, from fixed keys, so that every epoch and every run with
the same configuration measures the same points: curves over training then
show the network changing, not resampling noise.

They are drawn on the host, with numpy generators seeded from the key
(:func:`host_rng`), not with ``jax.random``: a few hundred integers need no
accelerator, each eager ``jax.random`` call compiles a program of its own
(about 0.75 s of a first ``measure()`` call on a CPU went to drawing 64
tuples), and numpy's PCG64 stream does not change with JAX's PRNG settings
or releases, so a configuration keeps measuring the same points.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

__all__ = [
    "DEFAULT_GRID",
    "SIMPLEX_ATOL",
    "TUPLE_STREAM",
    "WEIGHT_STREAM",
    "check_weights",
    "draw_tuples",
    "host_rng",
    "mixing_weights",
]

#: Mixing coefficients ``t`` of the K = 2 grid, ``w = (1 - t, t)``; also the
#: path parameters of the tangent residual for K > 2.
DEFAULT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

#: How far a weight row's sum may be from 1 (float32 rows of any length sum
#: to 1 within a few 1e-7; anything further off is a different weighting).
SIMPLEX_ATOL = 1e-5

#: Streams of :func:`host_rng`: one key gives independent tuples and weights.
TUPLE_STREAM = 0
WEIGHT_STREAM = 1


def host_rng(key, stream: int, default_seed: int = 0) -> np.random.Generator:
  """A numpy generator for one ``stream`` of draws fixed by ``key``.

  ``key``: an int seed, a jax key (typed or raw ``uint32``) or None
  (``default_seed``); a seed and ``jax.random.key(seed)`` are the same
  key.  The key's words seed a ``SeedSequence`` whose spawn key is
  ``stream``, so the streams of one key are independent and
  a given (key, stream) always gives the same numbers.
  """
  if key is None:
    key = default_seed
  if isinstance(key, (int, np.integer)):
    if not 0 <= key < 2**64:
      raise ValueError(f"key: a seed must be in [0, 2**64), got {key}")
    # The words of ``jax.random.key(seed)`` (threefry): an int seed and
    # its jax key give the same draws.
    words = [(int(key) >> 32) & 0xFFFFFFFF, int(key) & 0xFFFFFFFF]
  else:
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      key = jax.random.key_data(key)
    data = np.asarray(key)
    if data.dtype != np.uint32:
      raise ValueError(
          f"key must be an int seed or a jax key, got {type(key).__name__} "
          f"of dtype {data.dtype}"
      )
    words = [int(w) for w in data.ravel()]
  seq = np.random.SeedSequence(words, spawn_key=(int(stream),))
  return np.random.Generator(np.random.PCG64(seq))


def check_weights(
    weights, num_points: int, name: str = "weights"
) -> np.ndarray:
  """``weights`` as float32 ``(W, num_points)``, or a ValueError naming ``name``.

  The metrics are defined for convex combinations only: a row off the
  simplex (negative entries, or not summing to 1) mixes inputs into points
  that no mixup path visits, and the interpolation error's denominator is no
  longer the spread of the tuple around that point.
  """
  w = np.asarray(weights, dtype=np.float64)
  if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] != num_points:
    raise ValueError(
        f"{name} must have shape (num_weights, num_points={num_points}), got "
        f"shape {w.shape}"
    )
  if not np.all(np.isfinite(w)):
    raise ValueError(f"{name} must be finite, got {weights!r}")
  bad = np.flatnonzero(
      np.any(w < 0, axis=1) | (np.abs(w.sum(axis=1) - 1) > SIMPLEX_ATOL)
  )
  if bad.size:
    row = w[bad[0]]
    raise ValueError(
        f"{name} must lie on the simplex (entries >= 0 summing to 1): row "
        f"{int(bad[0])} is {row.tolist()} (sum {row.sum():.6g})"
    )
  return w.astype(np.float32)


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
  (an int seed or a jax key; default 0; its :data:`WEIGHT_STREAM`) so that
  the same configuration always evaluates the same weights.  Returned as
  numpy: they are constants of the evaluation, not traced values.
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
  # Dirichlet(1, ..., 1) == normalized i.i.d. Exp(1) variables.
  e = host_rng(key, WEIGHT_STREAM).standard_exponential(
      (num_dirichlet, num_points)
  )
  w = e / e.sum(axis=1, keepdims=True)  # normalized in float64: rows sum to 1
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
  uniformly random pair.  ``key``: an int seed or a jax key (its
  :data:`TUPLE_STREAM`).
  """
  n, t, k = int(num_examples), int(num_tuples), int(num_points)
  if k < 2:
    raise ValueError(f"num_points must be >= 2, got {k}")
  if n < k:
    raise ValueError(f"need num_examples >= num_points, got {n} < {k}")
  if t < 1:
    raise ValueError(f"num_tuples must be >= 1, got {t}")
  u = host_rng(key, TUPLE_STREAM).integers(
      0, np.arange(n, n - k, -1), size=(t, k)
  )
  out = np.empty((t, k), dtype=np.int64)
  for j in range(k):  # setup only; k is tiny
    idx = u[:, j].copy()
    prev = np.sort(out[:, :j], axis=1)
    for c in range(j):  # ascending: skip over every chosen index <= idx
      idx += idx >= prev[:, c]
    out[:, j] = idx
  return out.astype(np.int32)
