"""K-point mixup: Dirichlet mixing weights and mixtures of K-tuples (pure functions).

Our definitions (the paper's text is not available, so these are choices):

* Mixing weights for K points are drawn per example from a symmetric
  Dirichlet(alpha, ..., alpha). For K=2 this is exactly classic mixup: the
  first weight is Beta(alpha, alpha) and the second is one minus it.
* A K-tuple for example ``b`` of a batch is ``(x[b], x[pi_1[b]], ...,
  x[pi_{K-1}[b]])`` where ``pi_j`` are K-1 independent random permutations of
  the batch. Every example appears once in each of the K slots, so each image
  contributes equally to the mixed batch; tuples are built within the
  (global) batch, never from the whole dataset.
* Labels (one-hot or probabilities) are mixed with the same weights and the
  same permutations as the inputs, so ``mix(x)`` and ``mix(y)`` are the same
  convex combination.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dirichlet_weights(key: jax.Array, batch_size: int, num_points: int,
                      alpha: float) -> jax.Array:
  """Returns (batch_size, num_points) float32 weights, each row on the simplex.

  K=1 returns all ones (no mixing), which lets ``num_points=1`` act as a
  control that runs the same code path as mixup.
  """
  if num_points == 1:
    return jnp.ones((batch_size, 1), jnp.float32)
  if alpha == 1.0:
    # Dirichlet(1, ..., 1) is exactly normalised Exp(1) draws; this avoids
    # the Gamma rejection sampler, which costs seconds of compile on CPU.
    e = jax.random.exponential(key, (batch_size, num_points), jnp.float32)
    return e / jnp.sum(e, axis=1, keepdims=True)
  concentration = jnp.full((num_points,), alpha, jnp.float32)
  return jax.random.dirichlet(key, concentration, shape=(batch_size,))


def tuple_indices(key: jax.Array, batch_size: int,
                  num_points: int) -> jax.Array:
  """Returns (batch_size, num_points) int32 indices into the batch.

  Column 0 is the identity; columns 1..K-1 are independent permutations.
  """
  identity = jnp.arange(batch_size, dtype=jnp.int32)
  if num_points == 1:
    return identity[:, None]
  keys = jax.random.split(key, num_points - 1)
  perms = jax.vmap(lambda k: jax.random.permutation(k, batch_size))(keys)
  return jnp.concatenate([identity[None], perms.astype(jnp.int32)], 0).T


def mix(values: jax.Array, indices: jax.Array, weights: jax.Array) -> jax.Array:
  """Convex combination of rows of ``values`` along the batch axis.

  Args:
    values: (B, ...) inputs, one-hot labels or predicted probabilities.
    indices: (B, K) rows of ``values`` forming each tuple.
    weights: (B, K) convex weights.

  Returns:
    (B, ...) array ``out[b] = sum_k weights[b, k] * values[indices[b, k]]``
    in the dtype of ``values`` (weights are cast to it).
  """
  gathered = values[indices]  # (B, K, ...)
  w = weights.astype(values.dtype).reshape(weights.shape +
                                          (1,) * (values.ndim - 1))
  return jnp.sum(gathered * w, axis=1)


def sample_mixing(key: jax.Array, batch_size: int, num_points: int,
                  alpha: float) -> tuple[jax.Array, jax.Array]:
  """Draws (indices, weights) for one mixed batch from a single key."""
  k_perm, k_weights = jax.random.split(key)
  return (tuple_indices(k_perm, batch_size, num_points),
          dirichlet_weights(k_weights, batch_size, num_points, alpha))
