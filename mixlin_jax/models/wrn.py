"""Wide ResNet (Zagoruyko & Komodakis, 2016), WRN-28-2 as used by
MixMatch / FixMatch for 32x32 inputs.

Depth 28 gives (28 - 4) / 6 = 4 pre-activation basic blocks per group; three
groups with widths 16k, 32k, 64k (32/64/128 for k=2) and strides 1/2/2, a
16-channel 3x3 stem conv, final BN-ReLU, global average pooling and a dense
classifier.  About 1.47M parameters with 10 classes.

The nonlinearity is ReLU (as in the original WRN and in the other models
here) rather than FixMatch's leaky ReLU(0.1), so that all architectures
studied share the same activation function.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mixlin_jax.models.layers import (Dtype, PreActBlock, batch_norm, conv, dense,
                                      global_avg_pool)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` returning ``(logits, activations)``.

    ``activations`` keys are ``"00_stem"``, ``"01_group1.1"``, ...,
    ``"NN_pooled"``, ``"NN_logits"``: the two-digit prefix makes sorted key
    order (which is what JAX pytrees use) equal network order.
    Logits are cast to float32 whatever the compute dtype.
    """

    num_classes: int
    depth: int = 28
    widen_factor: int = 2
    stem_width: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool):
        if (self.depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {self.depth}")
        n_blocks = (self.depth - 4) // 6
        widths = [w * self.widen_factor for w in (16, 32, 64)]
        names = []
        acts = {}

        def record(name, value):
            key = f"{len(names):02d}_{name}"
            names.append(key)
            acts[key] = value

        h = conv(self.stem_width, 3, 1, dtype=self.dtype, name="stem")(x)
        record("stem", h)
        for g, (width, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            for b in range(1, n_blocks + 1):
                h = PreActBlock(width, stride if b == 1 else 1, dtype=self.dtype,
                                name=f"group{g}_{b}")(h, train)
                record(f"group{g}.{b}", h)
        h = nn.relu(batch_norm(train, dtype=self.dtype, name="final_bn")(h))
        h = global_avg_pool(h)
        record("pooled", h)
        logits = dense(self.num_classes, dtype=self.dtype, name="head")(h)
        logits = logits.astype(jnp.float32)
        record("logits", logits)
        return logits, acts


def WRN28_2(num_classes: int, dtype: Dtype = jnp.float32) -> WideResNet:
    """WRN-28-2: 3 groups of 4 blocks, widths 32/64/128, 16-channel stem."""
    return WideResNet(num_classes=num_classes, depth=28, widen_factor=2, dtype=dtype)
