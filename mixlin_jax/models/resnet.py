"""PreAct ResNet-18 for 32x32 inputs (CIFAR-style; He et al., 2016).

3x3 stem conv with 64 channels (no max-pool: the inputs are only 32x32),
four stages of two pre-activation basic blocks with widths 64/128/256/512 and
strides 1/2/2/2, then BN-ReLU, global average pooling and a dense classifier.
About 11.2M parameters with 100 classes.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mixlin_jax.models.layers import (
    Dtype,
    PreActBlock,
    batch_norm,
    conv,
    dense,
    global_avg_pool,
)


class PreActResNet(nn.Module):
  """Pre-activation ResNet returning ``(logits, activations)``.

  ``activations`` maps ``"NN_name"`` to every representation the linearity
  metrics study, in network order: stem, each block output
  (``blockS.B``: stage S, block B, both 1-based), pooled features, logits.
  The two-digit prefix is there because JAX pytrees order dict entries by
  sorted key; with the prefix, sorted order *is* network order, so anything
  that flattens the dict (``jax.tree.leaves``, checkpoints, metric tables)
  sees the layers in depth order.

  Logits are always float32 (cast after the classifier) so losses and
  metrics are computed in full precision even with ``dtype=bfloat16``.
  """

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  strides: Sequence[int] = (1, 2, 2, 2)
  stem_width: int = 64
  stage_name: str = "block"  # activation/parameter names: blockS.B or groupS.B
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool):
    names = []
    acts = {}

    def record(name, value):
      key = f"{len(names):02d}_{name}"
      names.append(key)
      acts[key] = value

    h = conv(self.stem_width, 3, 1, dtype=self.dtype, name="stem")(x)
    record("stem", h)
    for s, (n_blocks, width, stride) in enumerate(
        zip(self.stage_sizes, self.widths, self.strides), start=1
    ):
      for b in range(1, n_blocks + 1):
        h = PreActBlock(
            width,
            stride if b == 1 else 1,
            dtype=self.dtype,
            name=f"{self.stage_name}{s}_{b}",
        )(h, train)
        record(f"{self.stage_name}{s}.{b}", h)
    h = nn.relu(batch_norm(train, dtype=self.dtype, name="final_bn")(h))
    h = global_avg_pool(h)
    record("pooled", h)
    logits = dense(self.num_classes, dtype=self.dtype, name="head")(h)
    logits = logits.astype(jnp.float32)
    record("logits", logits)
    return logits, acts


def PreActResNet18(
    num_classes: int, dtype: Dtype = jnp.float32
) -> PreActResNet:
  """PreAct ResNet-18: blocks [2, 2, 2, 2], widths 64-512."""
  return PreActResNet(num_classes=num_classes, dtype=dtype)
