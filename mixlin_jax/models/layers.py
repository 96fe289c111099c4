"""Building blocks shared by the residual networks (PreAct ResNet and WRN).

Both ``resnet.py`` and ``wrn.py`` are stacks of the same pre-activation basic
block; keeping the block (and the conv / BatchNorm conventions) here means the
two architectures cannot silently drift apart in initialisation, BatchNorm
settings or shortcut handling.

Conventions (the training and linearity code rely on them):

* Parameters are always float32 (``param_dtype``); ``dtype`` is only the
  *compute* dtype, so mixed-precision training keeps float32 master weights.
* BatchNorm uses ``momentum=0.9, epsilon=1e-5`` (torch's 0.1 / 1e-5) and has
  no ``axis_name``: data parallelism is done with ``jit`` + shardings, so the
  batch statistics are already computed over the global batch.
* Convolutions have no bias (each one is followed by BatchNorm, which has its
  own shift) and use Kaiming-normal fan-out initialisation, as torchvision's
  ResNets do.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

# Kaiming normal, fan_out, untruncated: torch's ``kaiming_normal_(mode="fan_out",
# nonlinearity="relu")``, the usual choice for (pre-activation) ResNets.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(
    features: int,
    kernel: int = 3,
    strides: int = 1,
    *,
    dtype: Dtype,
    name: str | None = None,
) -> nn.Conv:
  """A bias-free 'SAME'-padded square conv with float32 params."""
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(strides, strides),
      padding="SAME",
      use_bias=False,
      kernel_init=conv_init,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def batch_norm(
    train: bool, *, dtype: Dtype, name: str | None = None
) -> nn.BatchNorm:
  """BatchNorm with the project-wide settings (see module docstring).

  ``train=False`` uses the running averages, so evaluation never needs
  ``mutable=["batch_stats"]``.
  """
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def dense(features: int, *, dtype: Dtype, name: str | None = None) -> nn.Dense:
  """Final classifier layer (float32 params, zero bias)."""
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  """(N, H, W, C) -> (N, C) mean over the spatial axes."""
  return jnp.mean(x, axis=(1, 2))


class PreActBlock(nn.Module):
  """Pre-activation basic block (He et al., 2016, "Identity Mappings ...").

  ``out = conv(relu(bn(conv(relu(bn(x)))))) + shortcut``, where the
  shortcut is ``x`` itself when shape is preserved and otherwise a strided
  1x1 conv of the *pre-activated* input ``relu(bn(x))`` (as in the common
  CIFAR PreAct ResNet implementations).  The returned tensor is the
  residual sum with no nonlinearity after it; this is the block output the
  linearity metrics study.
  """

  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  act: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    pre = self.act(batch_norm(train, dtype=self.dtype, name="bn1")(x))
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv(
          self.features, 1, self.strides, dtype=self.dtype, name="shortcut"
      )(pre)
    else:
      shortcut = x
    y = conv(self.features, 3, self.strides, dtype=self.dtype, name="conv1")(
        pre
    )
    y = self.act(batch_norm(train, dtype=self.dtype, name="bn2")(y))
    y = conv(self.features, 3, 1, dtype=self.dtype, name="conv2")(y)
    return y + shortcut.astype(y.dtype)
