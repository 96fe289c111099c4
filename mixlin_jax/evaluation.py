"""Evaluators: functions of the weights alone, ``(variables) -> dict``.

Training (every epoch) and post-hoc analysis (every checkpoint) measure a
model the same way. An evaluator is built once from the config and the
data -- its images stay on the device and its computation is compiled once
-- and then called on any weights: a training state's student or EMA
teacher, or a checkpoint restored for analysis. Building one needs neither
a :class:`~mixlin_jax.train.Trainer` nor an optimizer, so analysis builds
only what it measures.

* :class:`ClassificationEvaluator`: accuracy and mean cross-entropy on
  fixed labelled images (inference-mode BatchNorm, no augmentation).
* :func:`make_linearity_evaluator`: the per-layer linearity metrics
  (:class:`mixlin_jax.linearity.LinearityEvaluator`) on the configured
  fixed tuples.

``data`` arguments take a :class:`mixlin_jax.data.SemiSupervisedSplit` (host
arrays) or a :class:`mixlin_jax.train.DeviceData` (the same fields, already
on the device): anything with ``x_labelled``, ``y_labelled``,
``x_unlabelled``, ``x_test``, ``y_test``, ``mean`` and ``std``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mixlin_jax import data as data_lib
from mixlin_jax import models
from mixlin_jax import parallel

# ``apply_fn(variables, x) -> (logits, activations)`` in inference mode.
ApplyFn = Callable[[Any, jax.Array], tuple[jax.Array, Any]]


def resolve_dtype(name: str) -> jnp.dtype:
  """'auto' means bfloat16 on accelerators and float32 on CPU."""
  if name == "auto":
    name = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  return jnp.dtype(name)


def inference_fn(config: ml_collections.ConfigDict, num_classes: int, *,
                 dtype: str | None = None) -> ApplyFn:
  """The configured model as ``(variables, x) -> (logits, activations)``.

  ``dtype`` names the compute dtype (default ``config.model.compute_dtype``);
  the parameters are float32 whatever it is.
  """
  model = models.get_model(
      config.model.name, num_classes,
      dtype=resolve_dtype(dtype or config.model.compute_dtype))
  return lambda variables, x: model.apply(variables, x, train=False)


def classification_metrics(apply_fn: ApplyFn, variables, images, labels,
                           mean, std, *, batch_size: int,
                           mesh: jax.sharding.Mesh) -> dict:
  """Accuracy and mean loss over ``images`` (uint8, on device); traceable.

  Batches are scanned inside one computation; the last partial batch is
  padded and masked. Returns device scalars ``{"accuracy", "loss"}``.
  """
  n = images.shape[0]
  bs = min(batch_size, max(n, 1))
  bs = -(-bs // mesh.size) * mesh.size
  nb = -(-n // bs)
  idx = jnp.arange(nb * bs).reshape(nb, bs)
  valid = idx < n
  idx = jnp.minimum(idx, n - 1)

  def body(carry, inp):
    batch_idx, mask = inp
    x = parallel.shard_batch(
        data_lib.normalize(images[batch_idx], mean, std), mesh)
    logits, _ = apply_fn(variables, x)
    y = labels[batch_idx]
    correct = jnp.sum((jnp.argmax(logits, -1) == y) & mask)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return (carry[0] + correct,
            carry[1] + jnp.sum(jnp.where(mask, nll, 0))), None

  (correct, nll), _ = jax.lax.scan(
      body, (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)),
      (idx, valid))
  return {"accuracy": correct / n, "loss": nll / n}


class ClassificationEvaluator:
  """``(variables) -> {"accuracy": float, "loss": float}`` on fixed images.

  Args:
    apply_fn: ``(variables, x) -> (logits, activations)``, inference mode
      (see :func:`inference_fn`).
    images: ``(N, H, W, C)`` uint8; host arrays are placed replicated on
      ``mesh``, device arrays are used as they are.
    labels: ``(N,)`` integer labels.
    mean, std: per-channel normalisation (as in the training split).
    batch_size: images per scanned step (rounded up to the mesh size).
    mesh: devices the batches are sharded over (default: every device).
  """

  def __init__(self, apply_fn: ApplyFn, images, labels, *, mean, std,
               batch_size: int, mesh: jax.sharding.Mesh | None = None):
    self.mesh = mesh or parallel.make_mesh()
    self.images, self.labels, self.mean, self.std = (
        _on_mesh(images, self.mesh),
        _on_mesh(np.asarray(labels).astype(np.int32)
                 if not isinstance(labels, jax.Array) else labels, self.mesh),
        _on_mesh(mean, self.mesh), _on_mesh(std, self.mesh))
    # ``(variables, images, labels) -> device scalars``.
    self.metrics_on_device = jax.jit(functools.partial(
        classification_metrics, apply_fn, mean=self.mean, std=self.std,
        batch_size=batch_size, mesh=self.mesh))

  def __call__(self, variables) -> dict:
    metrics = jax.device_get(self.metrics_on_device(variables, self.images,
                                                    self.labels))
    return {k: float(v) for k, v in metrics.items()}


def _on_mesh(x, mesh: jax.sharding.Mesh):
  if isinstance(x, jax.Array):
    return x
  return parallel.put_replicated(np.asarray(x), mesh)


def make_classification_evaluators(
    config: ml_collections.ConfigDict, data, *, num_classes: int,
    mesh: jax.sharding.Mesh | None = None
) -> dict[str, ClassificationEvaluator]:
  """``{"test": ..., "labelled": ...}``: what every epoch record measures.

  The labelled set is measured the same clean way for every regime (no
  augmentation, no mixing, inference-mode BatchNorm): a regime's own
  training loss is not comparable across regimes (mixed targets,
  consistency term).
  """
  apply_fn = inference_fn(config, num_classes)
  make = functools.partial(ClassificationEvaluator, apply_fn, mean=data.mean,
                           std=data.std, batch_size=config.eval.batch_size,
                           mesh=mesh)
  return {"test": make(data.x_test, data.y_test),
          "labelled": make(data.x_labelled, data.y_labelled)}


def make_linearity_evaluator(config: ml_collections.ConfigDict, data, *,
                             num_classes: int,
                             mesh: jax.sharding.Mesh | None = None):
  """The configured :class:`~mixlin_jax.linearity.LinearityEvaluator`, or None.

  None when ``config.linearity.enabled`` is off. The forward passes run in
  ``linearity.compute_dtype`` (float32 by default: bf16 rounding alone puts
  a floor of ~1e-4 under the metrics); the tuples and weights come from
  ``linearity.seed``, so every run and every analysis of one config
  measures the same tuples.
  """
  if not config.linearity.enabled:
    return None
  from mixlin_jax import linearity  # pylint: disable=import-outside-toplevel
  mesh = mesh or parallel.make_mesh()
  lin = config.linearity
  if lin.split == "test":
    images = _on_mesh(data.x_test, mesh)
  else:
    images = jnp.concatenate([_on_mesh(data.x_labelled, mesh),
                              _on_mesh(data.x_unlabelled, mesh)])
  mean, std = _on_mesh(data.mean, mesh), _on_mesh(data.std, mesh)
  return linearity.LinearityEvaluator(
      inference_fn(config, num_classes, dtype=lin.compute_dtype), images,
      num_points=lin.num_points, num_tuples=lin.num_tuples,
      batch_size=lin.batch_size, key=jax.random.PRNGKey(lin.seed),
      grid=tuple(lin.grid), num_dirichlet=lin.num_dirichlet,
      preprocess=lambda x: data_lib.normalize(x, mean, std), mesh=mesh)
