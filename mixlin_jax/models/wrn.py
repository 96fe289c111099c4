"""Wide ResNet (Zagoruyko & Komodakis, 2016), WRN-28-2 as used by
MixMatch / FixMatch for 32x32 inputs.

Depth 28 gives (28 - 4) / 6 = 4 pre-activation basic blocks per group; three
groups with widths 16k, 32k, 64k (32/64/128 for k=2) and strides 1/2/2, a
16-channel 3x3 stem conv, final BN-ReLU, global average pooling and a dense
classifier.  About 1.47M parameters with 10 classes.

Architecturally this is the same pre-activation ResNet as
:mod:`mixlin_jax.models.resnet` with other stage sizes and widths, so it is
built from that one module; its stages are named ``group`` (activation keys
``"01_group1.1"`` ... ``"12_group3.4"``), as in the WRN paper.

The nonlinearity is ReLU (as in the original WRN and in the other models
here) rather than FixMatch's leaky ReLU(0.1), so that all architectures
studied share the same activation function.
"""

from __future__ import annotations

import jax.numpy as jnp

from mixlin_jax.models.layers import Dtype
from mixlin_jax.models.resnet import PreActResNet


def WideResNet(
    num_classes: int,
    depth: int = 28,
    widen_factor: int = 2,
    dtype: Dtype = jnp.float32,
) -> PreActResNet:
  """WRN-``depth``-``widen_factor`` returning ``(logits, activations)``."""
  if (depth - 4) % 6 != 0:
    raise ValueError(f"WRN depth must be 6n+4, got {depth}")
  n_blocks = (depth - 4) // 6
  return PreActResNet(
      num_classes=num_classes,
      stage_sizes=(n_blocks,) * 3,
      widths=tuple(w * widen_factor for w in (16, 32, 64)),
      strides=(1, 2, 2),
      stem_width=16,
      stage_name="group",
      dtype=dtype,
  )


def WRN28_2(num_classes: int, dtype: Dtype = jnp.float32) -> PreActResNet:
  """WRN-28-2: 3 groups of 4 blocks, widths 32/64/128, 16-channel stem."""
  return WideResNet(num_classes, depth=28, widen_factor=2, dtype=dtype)
