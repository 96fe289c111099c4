"""Tests for mixlin_jax.models: the (logits, activations) contract, shapes,
dtypes, BatchNorm state handling and parameter counts.

The two residual networks are checked with ``jax.eval_shape`` (abstract,
no FLOPs) except for one small real forward pass each; the CNN runs for real.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixlin_jax.models import MODEL_NAMES, activation_names, get_model

N = 2

RESNET18_NAMES = (
    "00_stem",
    "01_block1.1",
    "02_block1.2",
    "03_block2.1",
    "04_block2.2",
    "05_block3.1",
    "06_block3.2",
    "07_block4.1",
    "08_block4.2",
    "09_pooled",
    "10_logits",
)
WRN28_2_NAMES = (
    "00_stem",
    "01_group1.1",
    "02_group1.2",
    "03_group1.3",
    "04_group1.4",
    "05_group2.1",
    "06_group2.2",
    "07_group2.3",
    "08_group2.4",
    "09_group3.1",
    "10_group3.2",
    "11_group3.3",
    "12_group3.4",
    "13_pooled",
    "14_logits",
)
CNN_NAMES = ("00_conv1", "01_conv2", "02_conv3", "03_pooled", "04_logits")

# (model name, num_classes, input shape, expected ordered names, expected shapes)
CASES = {
    "cnn_digits": (
        "cnn",
        10,
        (N, 8, 8, 1),
        CNN_NAMES,
        {
            "00_conv1": (N, 8, 8, 32),
            "01_conv2": (N, 4, 4, 64),
            "02_conv3": (N, 4, 4, 64),
            "03_pooled": (N, 64),
            "04_logits": (N, 10),
        },
    ),
    "cnn_cifar": (
        "cnn",
        100,
        (N, 32, 32, 3),
        CNN_NAMES,
        {
            "00_conv1": (N, 32, 32, 32),
            "01_conv2": (N, 16, 16, 64),
            "02_conv3": (N, 16, 16, 64),
            "03_pooled": (N, 64),
            "04_logits": (N, 100),
        },
    ),
    "preact_resnet18": (
        "preact_resnet18",
        100,
        (N, 32, 32, 3),
        RESNET18_NAMES,
        {
            "00_stem": (N, 32, 32, 64),
            "01_block1.1": (N, 32, 32, 64),
            "02_block1.2": (N, 32, 32, 64),
            "03_block2.1": (N, 16, 16, 128),
            "04_block2.2": (N, 16, 16, 128),
            "05_block3.1": (N, 8, 8, 256),
            "06_block3.2": (N, 8, 8, 256),
            "07_block4.1": (N, 4, 4, 512),
            "08_block4.2": (N, 4, 4, 512),
            "09_pooled": (N, 512),
            "10_logits": (N, 100),
        },
    ),
    "wrn28_2": (
        "wrn28_2",
        10,
        (N, 32, 32, 3),
        WRN28_2_NAMES,
        {
            "00_stem": (N, 32, 32, 16),
            **{f"{i:02d}_group1.{i}": (N, 32, 32, 32) for i in range(1, 5)},
            **{f"{i + 4:02d}_group2.{i}": (N, 16, 16, 64) for i in range(1, 5)},
            **{f"{i + 8:02d}_group3.{i}": (N, 8, 8, 128) for i in range(1, 5)},
            "13_pooled": (N, 128),
            "14_logits": (N, 10),
        },
    ),
}


def _abstract(name, num_classes, shape, dtype, train):
  """Abstract init + apply: returns (variables, (logits, acts), updates|None)."""
  model = get_model(name, num_classes, dtype=dtype)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x
  )
  if train:
    out, updates = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
        variables,
        x,
    )
  else:
    out = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False), variables, x
    )
    updates = None
  return variables, out, updates


def test_model_names():
  assert MODEL_NAMES == ("cnn", "preact_resnet18", "wrn28_2", "wrn16_1", "wrn10_1")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(
    "dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"]
)
def test_contract(case, dtype):
  name, num_classes, shape, expected_names, expected_shapes = CASES[case]
  variables, (logits, acts), updates = _abstract(
      name, num_classes, shape, dtype, train=True
  )
  assert isinstance(acts, dict)
  names = tuple(acts)
  assert names == expected_names
  assert list(names) == sorted(names)
  # Pytree flattening (sorted keys) must give network order too.
  assert [a.shape for a in jax.tree.leaves(acts)] == [
      expected_shapes[k] for k in names
  ]
  assert {k: v.shape for k, v in acts.items()} == expected_shapes

  assert logits.shape == (N, num_classes)
  assert logits.dtype == jnp.float32
  assert acts[names[-1]].dtype == jnp.float32
  for k in names[:-1]:
    assert acts[k].dtype == dtype, k

  assert set(variables) == {"params", "batch_stats"}
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
  assert set(updates) == {"batch_stats"}
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
      variables["batch_stats"]
  )


@pytest.mark.parametrize("case", sorted(CASES))
def test_eval_needs_no_mutable(case):
  name, num_classes, shape, expected_names, _ = CASES[case]
  _, (logits, acts), _ = _abstract(
      name, num_classes, shape, jnp.bfloat16, train=False
  )
  assert tuple(acts) == expected_names
  assert logits.dtype == jnp.float32


def test_activation_names_helper():
  model = get_model("wrn28_2", 10)
  assert activation_names(model, (N, 32, 32, 3)) == WRN28_2_NAMES


@pytest.mark.parametrize(
    "name,num_classes,expected",
    [
        ("preact_resnet18", 100, 11.2e6),
        ("wrn28_2", 10, 1.47e6),
    ],
)
def test_param_counts(name, num_classes, expected):
  variables, _, _ = _abstract(
      name, num_classes, (N, 32, 32, 3), jnp.float32, train=False
  )
  count = sum(p.size for p in jax.tree.leaves(variables["params"]))
  assert abs(count - expected) / expected < 0.02, count


def test_get_model_rejects_unknown_name():
  with pytest.raises(ValueError) as info:
    get_model("resnet50", 10)
  msg = str(info.value)
  assert "model.name" in msg and "resnet50" in msg
  for allowed in MODEL_NAMES:
    assert allowed in msg


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10"])
def test_get_model_rejects_bad_num_classes(bad):
  with pytest.raises(ValueError, match="num_classes"):
    get_model("cnn", bad)


def test_get_model_dtype_argument():
  assert get_model("cnn", 10, "bfloat16").dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="dtype"):
    get_model("cnn", 10, jnp.int32)
  with pytest.raises(ValueError, match="dtype"):
    get_model("cnn", 10, "not_a_dtype")


def test_get_model_accepts_numpy_int():
  model = get_model("cnn", np.int64(10))
  assert model.num_classes == 10 and type(model.num_classes) is int


def _filled_variables(model, x):
  """Concrete variables without running the (slow-to-compile on CPU) random
  initialisers: He-scaled normal kernels, BN scale 1 / bias 0, running mean 0 /
  var 1.  Enough to check that a real forward pass is finite."""
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x
  )
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    last = path[-1].key
    if last == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(
          rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape), jnp.float32
      )
    if last in ("scale", "var"):
      return jnp.ones(leaf.shape, jnp.float32)
    return jnp.zeros(leaf.shape, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_cnn_real_forward_and_batch_stats():
  """Real computation on digit-sized inputs: train mode updates
  batch_stats, eval mode is deterministic, per-example and consistent with
  the returned activations.  (Variables are filled rather than drawn by
  ``model.init``: compiling the random initialisers alone takes seconds on
  CPU; ``init`` itself is traced by the ``eval_shape`` tests.)"""
  model = get_model("cnn", 10)
  x = jnp.asarray(
      np.random.default_rng(1).normal(1.0, 2.0, (8, 8, 8, 1)), jnp.float32
  )
  variables = _filled_variables(model, x)

  train_apply = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
  )
  eval_apply = jax.jit(lambda v, x: model.apply(v, x, train=False))

  (logits, acts), updates = train_apply(variables, x)
  assert np.all(np.isfinite(logits))
  np.testing.assert_array_equal(acts["04_logits"], logits)
  old = jax.tree.leaves(variables["batch_stats"])
  new = jax.tree.leaves(updates["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(old, new))

  variables = {**variables, **updates}
  logits_eval, acts_eval = eval_apply(variables, x)
  logits_eval2, _ = eval_apply(variables, x)
  np.testing.assert_array_equal(logits_eval, logits_eval2)
  # Inference-mode BN: an example's output does not depend on the rest of
  # the batch (same batch size, so no recompilation).
  shuffled, _ = eval_apply(variables, x[::-1])
  np.testing.assert_allclose(shuffled[::-1], logits_eval, rtol=1e-5, atol=1e-5)
  # Pooled features are the spatial mean of the last conv output.
  np.testing.assert_allclose(
      acts_eval["03_pooled"],
      acts_eval["02_conv3"].mean(axis=(1, 2)),
      rtol=1e-5,
      atol=1e-6,
  )
  # bf16 compute with the same float32 params stays close to float32.
  bf16 = get_model("cnn", 10, jnp.bfloat16)
  logits_bf16, _ = jax.jit(lambda v, x: bf16.apply(v, x, train=False))(
      variables, x
  )
  assert logits_bf16.dtype == jnp.float32
  np.testing.assert_allclose(logits_bf16, logits_eval, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("name", ["preact_resnet18", "wrn28_2"])
def test_resnets_real_forward(name):
  """One small real forward pass per residual net (eval mode, N=2)."""
  model = get_model(name, 10)
  x = jnp.asarray(
      np.random.default_rng(1).normal(size=(N, 32, 32, 3)), jnp.float32
  )
  variables = _filled_variables(model, x)
  logits, acts = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, x
  )
  assert logits.shape == (N, 10)
  np.testing.assert_array_equal(acts[tuple(acts)[-1]], logits)
  for k, a in acts.items():
    assert np.all(np.isfinite(np.asarray(a, np.float32))), k
