"""Losses of the three regimes and the consistency ramp-up (pure functions).

Our definitions, written down because the paper's formulas are not available:

* **ERM**: mean softmax cross-entropy on the labelled batch.
* **Supervised K-point mixup** (``supmixK``): mean soft-target cross-entropy
  of the model's logits on mixed labelled inputs against the same mixture of
  one-hot labels.
* **Unsupervised K-point mixup consistency** (``mixK``, ICT-style): the
  student's softmax on a mixture of unlabelled inputs is pulled toward the
  same mixture of an EMA teacher's softmax on the un-mixed inputs. The
  distance is the mean squared error between probability vectors, averaged
  over examples *and* classes (as in ICT and Mean Teacher). No gradient
  flows through the teacher (``stop_gradient``).
* **Total loss** = supervised part + ``w(step) * consistency`` where
  ``w`` ramps from 0 to ``consistency_weight`` with the sigmoid-shaped
  schedule ``exp(-5 (1 - t)^2)`` of Laine & Aila (2017), ``t`` being the
  fraction of the ramp-up done.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy against integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean cross-entropy against probability targets (mixed one-hot labels)."""
  return optax.softmax_cross_entropy(logits.astype(jnp.float32),
                                     targets.astype(jnp.float32)).mean()


def consistency_mse(student_logits: jax.Array,
                    teacher_probs: jax.Array) -> jax.Array:
  """Mean squared error between student probabilities and fixed targets.

  ``teacher_probs`` is wrapped in ``stop_gradient`` here as well, so callers
  cannot accidentally train the teacher through the target.
  """
  probs = jax.nn.softmax(student_logits.astype(jnp.float32))
  target = jax.lax.stop_gradient(teacher_probs.astype(jnp.float32))
  return jnp.mean((probs - target) ** 2)


def sigmoid_rampup(step: jax.Array, rampup_steps: int) -> jax.Array:
  """``exp(-5 (1 - t)^2)`` with ``t = clip(step / rampup_steps, 0, 1)``.

  ``rampup_steps <= 0`` means no ramp-up (always 1).
  """
  if rampup_steps <= 0:
    return jnp.ones((), jnp.float32)
  t = jnp.clip(jnp.asarray(step, jnp.float32) / rampup_steps, 0.0, 1.0)
  return jnp.exp(-5.0 * (1.0 - t) ** 2)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, -1) == labels)
