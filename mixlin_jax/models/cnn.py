"""A small CNN for tiny images (8x8x1 sklearn digits up to 32x32x3) and tests.

conv(32)-BN-ReLU, conv(64, stride 2)-BN-ReLU, conv(64)-BN-ReLU, global
average pooling, dense.  Small enough to train on a few thousand images in
seconds on a laptop CPU, and it has the same ``(logits, activations)``
interface as the ResNets so every pipeline can be exercised quickly.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mixlin_jax.models.layers import Dtype, batch_norm, conv, dense, global_avg_pool


class SmallCNN(nn.Module):
  """Small CNN returning ``(logits, activations)``.

  ``activations`` keys: ``"00_conv1"``, ``"01_conv2"``, ``"02_conv3"``
  (each conv layer's output after BN-ReLU), ``"03_pooled"``,
  ``"04_logits"``.  The two-digit prefix makes sorted order (JAX pytrees
  sort dict keys) equal network order.  Logits are float32.
  """

  num_classes: int
  widths: Sequence[int] = (32, 64, 64)
  strides: Sequence[int] = (1, 2, 1)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool):
    acts = {}
    h = x
    for i, (width, stride) in enumerate(zip(self.widths, self.strides)):
      h = conv(width, 3, stride, dtype=self.dtype, name=f"conv{i + 1}")(h)
      h = nn.relu(batch_norm(train, dtype=self.dtype, name=f"bn{i + 1}")(h))
      acts[f"{len(acts):02d}_conv{i + 1}"] = h
    h = global_avg_pool(h)
    acts[f"{len(acts):02d}_pooled"] = h
    logits = dense(self.num_classes, dtype=self.dtype, name="head")(h)
    logits = logits.astype(jnp.float32)
    acts[f"{len(acts):02d}_logits"] = logits
    return logits, acts
