"""Properties of the linearity measurement that the README states, each
checked from its definition there (not from the code): the degenerate-tuple
threshold per dtype, the Dirichlet(1) weights, the tuples shared by runs of
different training seeds, regexes searched in the module path,
``logits_layer=None`` and the ``t`` column of the table (CPU, small)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as scipy_stats

from mixlin_jax import evaluation
from mixlin_jax import linearity as L
from mixlin_jax import train
from mixlin_jax.linearity.metrics import degenerate_rtol_for

import helpers

# ---------------------------------------------------------------------------
# Degenerate tuples: rtol = max(1e-8, eps(layer dtype)^2)

D = 64  # representation width of the threshold probe
# x_2 = x_1 + delta e_0 with x_1 = 1: the tuple's relative spread is
# (delta^2 / 4) / mean_i ||h_i||^2.  All values are exact in bfloat16 except
# the first two deltas, which bfloat16 rounds to 0 (degenerate there too).
DELTAS = (1.13e-3, 2.26e-3, 0.09375, 0.1875)


def _relative_spread(delta):
  second = (D + (D + 2 * delta + delta**2)) / 2
  return delta**2 / 4 / second


def _two_dtypes(v, x):
  return x, {"00_f32": x, "01_bf16": x.astype(jnp.bfloat16)}


def test_threshold_constants_per_dtype():
  eps_bf16 = 2.0**-7  # 8 significand bits
  eps_f16 = 2.0**-10
  assert L.DEGENERATE_RTOL == 1e-8
  rtol = degenerate_rtol_for
  assert rtol(jnp.float32) == 1e-8  # eps^2 = 1.4e-14 is below the floor
  assert rtol(jnp.float64) == 1e-8
  assert rtol(jnp.bfloat16) == pytest.approx(eps_bf16**2, rel=1e-12)
  assert rtol(jnp.float16) == pytest.approx(eps_f16**2, rel=1e-12)


def test_tuples_between_the_float32_and_bfloat16_floors():
  """README: a tuple is degenerate when its spread is at most rtol times
  its second moment, rtol = max(1e-8, eps^2): between 1e-8 and eps(bf16)^2
  = 6.1e-5 a float32 layer keeps it and a bfloat16 layer leaves it out."""
  spreads = [_relative_spread(d) for d in DELTAS]
  # 5e-9 | 2e-8 (float32 floor between) | 3.4e-5 | 1.4e-4 (bf16 floor)
  assert spreads[0] < 1e-8 < spreads[1] < spreads[2] < 2.0**-14 < spreads[3]
  x = np.ones((len(DELTAS), 2, D), np.float32)
  x[:, 1, 0] += np.asarray(DELTAS, np.float32)
  want = {  # True = left out (NaN)
      "00_f32": [True, False, False, False],
      "01_bf16": [True, True, True, False],
  }
  for per_tuple in (L.per_tuple_metrics, L.naive_per_tuple_metrics):
    out = per_tuple(_two_dtypes, {}, jnp.asarray(x), [[0.5, 0.5]])
    for metric in ("interp_error", "relative_error"):
      for layer, left_out in want.items():
        got = np.isnan(np.asarray(out[metric][layer][0])).tolist()
        assert got == left_out, (per_tuple.__name__, metric, layer)


def _square(v, x):
  return x, {"00_square": x * x}


def test_k3_tangent_path_with_merged_end_points_is_left_out():
  """README: for K > 2 the tangent residual uses the tuple's first two
  points, and (metrics docstring) asks the degenerate test of those two:
  x_1 = a, x_2 = -a merge at h = x^2 though the third point does not."""
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 3)).astype(np.float32)
  x = jnp.asarray(np.stack([a, -a, b])[None])  # (1, 3, 3)
  w = L.mixing_weights(3, num_dirichlet=2)
  for per_tuple in (L.per_tuple_metrics, L.naive_per_tuple_metrics):
    out = per_tuple(_square, {}, x, w, tangent_t=(0.3, 0.6))
    assert np.all(np.isnan(out["tangent_residual"]["00_square"]))
    assert np.all(np.isfinite(out["interp_error"]["00_square"]))


def _identity(v, x):
  return x, {"00_x": x}


def test_collapsed_means_more_than_half_of_the_tuples():
  """README: "A layer where more than half of the tuples are degenerate is
  flagged as dead/collapsed".  Three identical points and a fourth: half
  of the pairs coincide; keys with exactly 4 and 5 of 8 such tuples."""
  images = np.zeros((4, 2), np.float32)
  images[3] = 1.0
  found = {}
  for key in range(200):
    ev = L.LinearityEvaluator(
        _identity,
        images,
        num_points=2,
        num_tuples=8,
        batch_size=8,
        key=key,
        grid=(0.5,),
        metrics=("interp_error",),
    )
    found.setdefault(int(np.sum(np.all(ev.tuples < 3, axis=1))), ev)
    if 4 in found and 5 in found:
      break
  half, more = found[4](None), found[5](None)
  assert half["degenerate"] == {"00_x": 4} and half["collapsed_layers"] == []
  assert more["degenerate"] == {"00_x": 5}
  assert more["collapsed_layers"] == ["00_x"]


# ---------------------------------------------------------------------------
# K > 2 weights: Dirichlet(1), i.e. uniform on the simplex


@pytest.mark.parametrize("K", [3, 5])
def test_k_point_weights_are_dirichlet_one(K):
  """Under Dirichlet(1, ..., 1) every coordinate is Beta(1, K - 1), and the
  share w_1 / (w_1 + w_2) of two of them is uniform (aggregation)."""
  w = L.mixing_weights(K, num_dirichlet=20000, key=jax.random.key(7))
  w = w.astype(np.float64)
  for i in range(K):
    p = scipy_stats.kstest(w[:, i], scipy_stats.beta(1, K - 1).cdf).pvalue
    assert p > 1e-3, (i, p)
  share = w[:, 0] / (w[:, 0] + w[:, 1])
  assert scipy_stats.kstest(share, "uniform").pvalue > 1e-3


# ---------------------------------------------------------------------------
# Runs that differ only in their training seed measure the same points


def _evaluator(**overrides):
  config = helpers.tiny_config(linearity__num_points=3, **overrides)
  return evaluation.make_linearity_evaluator(
      config, train.load_split(config), num_classes=10
  )


def test_training_seed_does_not_move_the_linearity_tuples():
  """README: tuples and weights come from ``linearity.seed``, identical for
  every run, so ``regime(s) - erm(s)`` and seed-to-seed comparisons are on
  the same points.  Both seeds nonzero: a mix-up with ``seed`` is visible."""
  a, b = _evaluator(seed=1), _evaluator(seed=2)
  np.testing.assert_array_equal(a.tuples, b.tuples)
  np.testing.assert_array_equal(a.weights, b.weights)
  np.testing.assert_array_equal(  # the same images, not only indices
      np.asarray(a.images)[a.tuples], np.asarray(b.images)[b.tuples]
  )
  other = _evaluator(seed=1, linearity__seed=3)
  assert not np.array_equal(a.tuples, other.tuples)
  assert not np.array_equal(a.weights, other.weights)


# ---------------------------------------------------------------------------
# measure(): layers regexes, logits_layer=None, the t column


class Inner(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.tanh(nn.Dense(4, name="inner")(x))


class Pathed(nn.Module):
  """Paths "stem", "block/inner", "block", then "output" (the head)."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(4, name="stem")(x.reshape(x.shape[0], -1))
    x = Inner(name="block")(x)
    return nn.Dense(3, name="head")(x)


def _images(n=16, shape=(2, 3)):
  rng = np.random.default_rng(0)
  return rng.normal(size=(n,) + shape).astype(np.float32)


def test_layers_regex_is_searched_in_the_module_path():
  """README: ``layers=`` is "a regex searched in the path" (``"block|head"``):
  it matches anywhere in ``block/inner``, not only at its start."""
  model = Pathed()
  images = _images()
  variables = model.init(jax.random.key(0), images[:1])

  def names(layers):
    reps = L.Representations.of_model(model, layers=layers)
    return reps.layer_names(variables, images[:2])

  assert names("inner") == ["block/inner", "output"]
  assert names("tem") == ["stem", "output"]
  assert names("k/in") == ["block/inner", "output"]  # across the separator
  # (the head's output is the model's: listed once, as "output")
  assert names("stem|inner") == ["stem", "block/inner", "output"]


class Affine(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))


SMALL = dict(num_tuples=6, batch_size=6, key=1)


def test_logits_layer_none_takes_the_raw_gap_on_the_outputs():
  """README: the raw gap is on log-probabilities for a layer of class
  logits, ``logits_layer=None`` names none.  An affine model's output
  commutes with mixing (raw gap 0); its log-softmax does not."""
  model = Affine()
  images = _images()
  variables = model.init(jax.random.key(0), images[:1])
  kwargs = dict(SMALL, metrics=("raw_gap",))
  raw = L.measure(model, variables, images, logits_layer=None, **kwargs)
  assert max(raw.record["raw_gap"]["output"]["mean"]) < 1e-5
  auto = L.measure(model, variables, images, **kwargs)
  assert min(auto.record["raw_gap"]["output"]["mean"]) > 1e-3


@pytest.mark.parametrize("K", [2, 3])
def test_t_column_is_the_path_parameter(K):
  """README's table: ``t`` is w_2 for K = 2 (weights (1 - t, t)), the
  tangent residual's ``tangent_t`` for K > 2, NaN for Dirichlet weights."""
  model = Affine()
  images = _images()
  variables = model.init(jax.random.key(0), images[:1])
  grid = (0.2, 0.7)
  result = L.measure(
      model,
      variables,
      images,
      num_points=K,
      grid=grid,
      num_dirichlet=2,
      **SMALL,
  )
  table = result.table[result.table.layer == "output"]
  for metric in L.METRICS:
    rows = table[table.metric == metric]
    if K == 2 or metric == "tangent_residual":
      np.testing.assert_allclose(rows["t"], grid, rtol=1e-6, err_msg=metric)
    else:
      assert rows["t"].isna().all(), metric
    if K == 2:
      w2 = [w[1] for w in rows["weights"]]
      np.testing.assert_allclose(w2, grid, rtol=1e-6, err_msg=metric)
