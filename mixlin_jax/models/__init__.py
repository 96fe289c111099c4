"""Model zoo: every model maps normalized NHWC float images to
``(logits, activations)``.

* ``logits``: float32, shape ``(N, num_classes)``, whatever the compute dtype.
* ``activations``: ``{"NN_name": array (N, ...)}`` with every representation
  the linearity metrics study (stem / conv outputs, each residual block,
  pooled features, logits).  The two-digit index prefix exists because JAX
  pytrees order dict entries by sorted key: with it, sorted order equals
  network order.

Call as ``model.apply(variables, x, train=True, mutable=["batch_stats"])``
for training (returns ``((logits, acts), updates)``) or
``model.apply(variables, x, train=False)`` for inference-mode BatchNorm.
Variable collections are ``params`` (always float32) and ``batch_stats``.

Importing this package has no side effects.
"""

from __future__ import annotations

import operator
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixlin_jax.models.cnn import SmallCNN
from mixlin_jax.models.resnet import PreActResNet, PreActResNet18
from mixlin_jax.models.wrn import WRN28_2, WideResNet

MODEL_NAMES = ("cnn", "preact_resnet18", "wrn28_2", "wrn16_1", "wrn10_1")

# name -> (num_classes, dtype) -> module; keys in the order of MODEL_NAMES.
_BUILDERS = {
    "cnn": lambda n, dtype: SmallCNN(num_classes=n, dtype=dtype),
    "preact_resnet18": lambda n, dtype: PreActResNet18(n, dtype=dtype),
    "wrn28_2": lambda n, dtype: WRN28_2(n, dtype=dtype),
    # Narrow WRNs sized for CPU studies at 32x32 (see models/wrn.py).
    "wrn16_1": lambda n, dtype: WideResNet(n, 16, 1, dtype=dtype),
    "wrn10_1": lambda n, dtype: WideResNet(n, 10, 1, dtype=dtype),
}

__all__ = [
    "MODEL_NAMES",
    "PreActResNet",
    "PreActResNet18",
    "SmallCNN",
    "WRN28_2",
    "WideResNet",
    "activation_names",
    "get_model",
]


def get_model(name: str, num_classes: int, dtype=jnp.float32) -> nn.Module:
  """Build the model called ``name`` (one of ``MODEL_NAMES``).

  ``dtype`` is the compute dtype (e.g. ``jnp.bfloat16`` or ``"bfloat16"``);
  parameters stay float32.  Raises ``ValueError`` for an unknown name (the
  message names the config field ``model.name`` and the allowed values, so
  it points at the fix), a non-positive ``num_classes`` or a non-float
  ``dtype``.
  """
  if name not in _BUILDERS:
    raise ValueError(
        f"model.name={name!r} is not a known model; allowed values: "
        f"{', '.join(MODEL_NAMES)}"
    )
  try:
    n = operator.index(num_classes)  # accepts numpy ints, rejects floats
  except TypeError:
    n = None
  if n is None or isinstance(num_classes, bool) or n < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  num_classes = n
  try:
    dtype = jnp.dtype(dtype)  # also accepts names such as "bfloat16"
  except TypeError:
    raise ValueError(f"dtype must be a floating dtype, got {dtype!r}") from None
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
  return _BUILDERS[name](num_classes, dtype)


def activation_names(
    model: nn.Module, input_shape: Sequence[int]
) -> tuple[str, ...]:
  """Ordered activation names of ``model`` for inputs of ``input_shape``
  (NHWC, batch included), computed abstractly with ``jax.eval_shape`` (no
  FLOPs, no parameter allocation)."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)

  def names_of(x):
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    return model.apply(variables, x, train=False)[1]

  return tuple(sorted(jax.eval_shape(names_of, x)))
