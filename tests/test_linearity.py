"""Tests for the linearity metrics with tiny hand-written models (CPU, no data).

The real models are not used on purpose: the metrics have closed forms for
affine and elementwise-square maps, and a naive loop is the reference for the
vectorized, jitted implementation on small nonlinear models.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixlin_jax import linearity as L
from mixlin_jax.linearity import sampling

import helpers

IMG = (4, 4, 3)
D_IN = int(np.prod(IMG))


# ---------------------------------------------------------------------------
# Tiny models: apply_fn(variables, x NHWC) -> (logits, {layer: (N, ...)})


def _affine_vars(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "A": jnp.asarray(rng.normal(size=(D_IN, 16)) / 6, jnp.float32),
      "b": jnp.asarray(rng.normal(size=(16,)), jnp.float32),
      "B": jnp.asarray(rng.normal(size=(16, 12)) / 4, jnp.float32),
      "c": jnp.asarray(rng.normal(size=(12,)), jnp.float32),
      "C": jnp.asarray(rng.normal(size=(12, 5)) / 3, jnp.float32),
      "d": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
  }


def affine_apply(v, x):
  z = x.reshape(x.shape[0], -1)
  h1 = z @ v["A"] + v["b"]
  h2 = h1 @ v["B"] + v["c"]
  logits = h2 @ v["C"] + v["d"]
  return logits, {"00_h1": h1, "01_h2": h2, "02_logits": logits}


def square_apply(v, x):
  return x.sum(), {"00_sq": x**2}


def _mlp_vars(seed=1):
  rng = np.random.default_rng(seed)
  return {
      "conv": jnp.asarray(rng.normal(size=(3, 3, 3, 4)) / 3, jnp.float32),
      "A": jnp.asarray(rng.normal(size=(4 * 4 * 4, 10)) / 4, jnp.float32),
      "B": jnp.asarray(rng.normal(size=(10, 5)) / 2, jnp.float32),
      # Output affine map of layer 02_mlp: variables, not code, so the
      # rescaled model of test (d) reuses the same compiled computation.
      "s": jnp.float32(1.0),
      "o": jnp.float32(0.0),
  }


def nonlinear_apply(v, x):
  """Tiny conv -> relu -> tanh MLP (float32); dict built unsorted."""
  c = jax.lax.conv_general_dilated(
      x, v["conv"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  c = jax.nn.relu(c)
  h = jnp.tanh(c.reshape(c.shape[0], -1) @ v["A"])
  logits = h @ v["B"]
  acts = {
      "03_logits": logits,
      "01_conv": c,
      "02_mlp": v["s"] * h + v["o"],
      "00_stem": x,
  }
  return logits, acts


def _x_tuples(T, K, seed=0):
  return jnp.asarray(
      np.random.default_rng(seed).normal(size=(T, K) + IMG), jnp.float32
  )


def _np(tree):
  return jax.tree.map(np.asarray, tree)


# ---------------------------------------------------------------------------
# (a) affine maps are perfectly linear


@pytest.mark.parametrize("K", [2, 3])
def test_affine_model_scores_zero(K):
  x = _x_tuples(6, K)
  w = L.mixing_weights(K)
  out = _np(L.per_tuple_metrics(affine_apply, _affine_vars(), x, w))
  assert set(out) == set(L.METRICS)
  for metric in L.METRICS:
    assert list(out[metric]) == ["00_h1", "01_h2", "02_logits"]
    # raw_gap is not normalized: float32 rounding of O(1) activations.
    tol = 1e-5 if metric == "raw_gap" else 1e-8
    for layer, v in out[metric].items():
      assert np.all(np.isfinite(v))
      assert np.max(np.abs(v)) < tol, (metric, layer, np.max(v))


# ---------------------------------------------------------------------------
# (b) h(x) = x**2 has closed forms


def test_square_closed_form():
  x = _x_tuples(5, 2, seed=3)
  w = L.mixing_weights(2)
  out = _np(L.per_tuple_metrics(square_apply, {}, x, w))
  a = np.asarray(x[:, 0], np.float64).reshape(5, -1)
  b = np.asarray(x[:, 1], np.float64).reshape(5, -1)
  w1, w2 = w[:, :1].astype(np.float64), w[:, 1:].astype(np.float64)  # (W, 1)
  # r - m = -w1 w2 (a - b)^2
  num = (w1 * w2) ** 2 * ((a - b) ** 4).sum(-1)
  # sum_i w_i ||h_i - m||^2 = w1 w2 ||a^2 - b^2||^2
  den = w1 * w2 * ((a**2 - b**2) ** 2).sum(-1)
  m = w1[:, :, None] * a[None] ** 2 + w2[:, :, None] * b[None] ** 2  # (W, T, D)
  np.testing.assert_allclose(out["interp_error"]["00_sq"], num / den, rtol=1e-4)
  np.testing.assert_allclose(
      out["relative_error"]["00_sq"], num / (m**2).sum(-1), rtol=1e-4
  )
  # Tangent: h(a + t d) - h(a) - t 2 a d = t^2 d^2, with d = b - a.
  t = w2
  d = b - a
  tnum = t**4 * (d**4).sum(-1)
  tden = ((2 * t[:, :, None] * a * d + t[:, :, None] ** 2 * d**2) ** 2).sum(-1)
  np.testing.assert_allclose(
      out["tangent_residual"]["00_sq"], tnum / tden, rtol=1e-4
  )
  np.testing.assert_allclose(out["raw_gap"]["00_sq"], np.sqrt(num), rtol=1e-4)


# ---------------------------------------------------------------------------
# (c) vectorized == naive loop


@pytest.mark.parametrize("K", [2, 3])
def test_vectorized_matches_naive(K):
  x = _x_tuples(7, K, seed=K)
  w = L.mixing_weights(K, key=jax.random.key(5))
  logits = ("03_logits",)  # raw_gap on log-probabilities there
  fast = _np(
      L.per_tuple_metrics(
          nonlinear_apply, _mlp_vars(), x, w, logits_layers=logits
      )
  )
  slow = L.naive_per_tuple_metrics(
      nonlinear_apply, _mlp_vars(), x, w, logits_layers=logits
  )
  n_t = len(L.DEFAULT_GRID) if K > 2 else w.shape[0]
  for metric in L.METRICS:
    assert list(fast[metric]) == ["00_stem", "01_conv", "02_mlp", "03_logits"]
    for layer in fast[metric]:
      f, s = fast[metric][layer], slow[metric][layer]
      rows = n_t if metric == "tangent_residual" else w.shape[0]
      assert f.shape == (rows, 7) and f.dtype == np.float32
      # raw_gap is absolute: the naive loop mixes inputs in float64, which
      # leaves ~1e-7 on the (exactly linear) input layer.
      atol = 1e-6 if metric == "raw_gap" else 1e-9
      np.testing.assert_allclose(
          f, s, rtol=2e-4, atol=atol, err_msg=f"{metric} {layer}"
      )


def test_metric_subset_and_custom_tangent_t():
  x = _x_tuples(4, 3)
  w = L.mixing_weights(3)
  tt = (0.25, 0.5)
  fast = _np(
      L.per_tuple_metrics(
          nonlinear_apply,
          _mlp_vars(),
          x,
          w,
          tangent_t=tt,
          metrics=("tangent_residual",),
      )
  )
  slow = L.naive_per_tuple_metrics(
      nonlinear_apply,
      _mlp_vars(),
      x,
      w,
      tangent_t=tt,
      metrics=("tangent_residual",),
  )
  assert set(fast) == {"tangent_residual"}
  for layer in fast["tangent_residual"]:
    assert fast["tangent_residual"][layer].shape == (2, 4)
    np.testing.assert_allclose(
        fast["tangent_residual"][layer],
        slow["tangent_residual"][layer],
        rtol=2e-4,
        atol=1e-9,
    )
  with pytest.raises(ValueError):
    L.per_tuple_metrics(nonlinear_apply, _mlp_vars(), x, w, metrics=("nope",))


# ---------------------------------------------------------------------------
# (d) invariance to scaling/shifting a layer


def test_interp_error_invariant_to_affine_rescaling_of_layer():
  x = _x_tuples(7, 2, seed=7)  # same shapes as test (c): cached compile
  w = L.mixing_weights(2)
  base = _np(L.per_tuple_metrics(nonlinear_apply, _mlp_vars(), x, w))
  v = dict(_mlp_vars(), s=jnp.float32(7.0), o=jnp.float32(3.0))  # h -> 7 h + 3
  scaled = _np(L.per_tuple_metrics(nonlinear_apply, v, x, w))
  assert base["interp_error"]["02_mlp"].mean() > 1e-3  # non-trivial model
  for metric in ("interp_error", "tangent_residual"):
    np.testing.assert_allclose(
        scaled[metric]["02_mlp"], base[metric]["02_mlp"], rtol=1e-3
    )
  # relative_error is deliberately not shift invariant; raw_gap scales.
  assert not np.allclose(
      scaled["relative_error"]["02_mlp"], base["relative_error"]["02_mlp"]
  )
  np.testing.assert_allclose(
      scaled["raw_gap"]["02_mlp"], 7 * base["raw_gap"]["02_mlp"], rtol=1e-3
  )


# ---------------------------------------------------------------------------
# (e) weights and tuples


def test_mixing_weights():
  w2 = L.mixing_weights(2)
  np.testing.assert_allclose(w2[:, 1], L.DEFAULT_GRID, rtol=1e-6)
  np.testing.assert_allclose(w2.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(L.mixing_weights(2, grid=(0.5,)), [[0.5, 0.5]])
  for K in (3, 5):
    w = L.mixing_weights(K, num_dirichlet=11, key=jax.random.key(3))
    assert w.shape == (11, K)
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(
        w, L.mixing_weights(K, num_dirichlet=11, key=jax.random.key(3))
    )
    assert not np.array_equal(
        w, L.mixing_weights(K, num_dirichlet=11, key=jax.random.key(4))
    )
  # Default key is fixed.
  np.testing.assert_array_equal(L.mixing_weights(3), L.mixing_weights(3))
  assert L.mixing_weights(3).shape == (8, 3)
  with pytest.raises(ValueError):
    L.mixing_weights(1)


@pytest.mark.parametrize("K,N", [(2, 10), (3, 50), (4, 4)])
def test_draw_tuples(K, N):
  t = L.draw_tuples(jax.random.key(0), N, 500, K)
  assert t.shape == (500, K) and t.dtype == np.int32
  assert t.min() >= 0 and t.max() < N
  assert all(len(set(row)) == K for row in t.tolist())
  np.testing.assert_array_equal(t, L.draw_tuples(jax.random.key(0), N, 500, K))
  assert not np.array_equal(t, L.draw_tuples(jax.random.key(1), N, 500, K))
  # Roughly uniform marginals (each index used ~ 500 K / N times).
  counts = np.bincount(t.ravel(), minlength=N)
  assert counts.min() > 0.5 * 500 * K / N


def test_host_draws_take_a_seed_or_its_jax_key_and_split_into_streams():
  """An int seed, its typed jax key and its raw key draw the same tuples
  and weights; tuples and weights come from different streams; anything
  else is refused with the argument's name."""
  for key in (jax.random.key(3), jax.random.PRNGKey(3)):
    np.testing.assert_array_equal(
        L.draw_tuples(3, 50, 20, 3), L.draw_tuples(key, 50, 20, 3)
    )
    np.testing.assert_array_equal(
        L.mixing_weights(3, key=3), L.mixing_weights(3, key=key)
    )
  tuples = sampling.host_rng(3, sampling.TUPLE_STREAM).random(8)
  weights = sampling.host_rng(3, sampling.WEIGHT_STREAM).random(8)
  assert not np.allclose(tuples, weights)
  with pytest.raises(ValueError, match="key"):
    L.draw_tuples(-1, 50, 20, 3)
  with pytest.raises(ValueError, match="key"):
    L.draw_tuples(np.float32(3.0), 50, 20, 3)


def test_draw_tuples_rejects_too_few_examples():
  with pytest.raises(ValueError):
    L.draw_tuples(jax.random.key(0), 2, 3, 3)


# ---------------------------------------------------------------------------
# (f), (g) streaming evaluator


def _preprocess(u):
  return u.astype(jnp.float32) / 255.0 - 0.5


@pytest.mark.parametrize("K", [2, 3])
def test_evaluator_matches_numpy_statistics(K):
  images = np.random.default_rng(0).integers(
      0, 256, size=(30,) + IMG, dtype=np.uint8
  )
  ev = L.LinearityEvaluator(
      nonlinear_apply,
      images,
      num_points=K,
      num_tuples=13,
      batch_size=5,
      key=jax.random.key(11),
      num_dirichlet=4,
      preprocess=_preprocess,
  )
  variables = _mlp_vars()
  res = ev(variables)

  # Fixed tuples/weights: a second evaluator with the same config agrees.
  ev2 = L.LinearityEvaluator(
      nonlinear_apply,
      images,
      num_points=K,
      num_tuples=13,
      batch_size=5,
      key=jax.random.key(11),
      num_dirichlet=4,
      preprocess=_preprocess,
  )
  np.testing.assert_array_equal(ev.tuples, ev2.tuples)
  np.testing.assert_array_equal(ev.weights, ev2.weights)

  x = _preprocess(jnp.asarray(images)[ev.tuples])  # (T, K, ...)
  # "NN_logits" layers hold logits (the project's naming convention).
  assert ev.logits_layers == ("03_logits",)
  ref = L.naive_per_tuple_metrics(
      nonlinear_apply, variables, x, ev.weights, logits_layers=ev.logits_layers
  )
  layers = ["00_stem", "01_conv", "02_mlp", "03_logits"]
  assert res["layers"] == layers
  assert res["num_tuples"] == 13
  np.testing.assert_allclose(res["weights"], ev.weights)
  assert len(res["tangent_t"]) == (
      len(L.DEFAULT_GRID) if K > 2 else ev.weights.shape[0]
  )
  for metric in L.METRICS:
    assert list(res[metric]) == layers
    atol = 1e-6 if metric == "raw_gap" else 1e-9
    for layer in layers:
      v = ref[metric][layer]  # (W, T)
      mean = v.mean(axis=1)
      se = v.std(axis=1, ddof=1) / np.sqrt(v.shape[1])
      got = res[metric][layer]
      assert all(isinstance(f, float) for f in got["mean"] + got["stderr"])
      assert got["count"] == 13 and got["degenerate"] == 0
      np.testing.assert_allclose(got["mean"], mean, rtol=1e-3, atol=atol)
      np.testing.assert_allclose(got["stderr"], se, rtol=1e-3, atol=atol)
  assert res["degenerate"] == {layer: 0 for layer in layers}
  assert res["collapsed_layers"] == []

  # A second call (e.g. next epoch) does not even retrace, and agrees.
  with helpers.LoweringCounter() as lowerings:
    res2 = ev(variables)
  assert lowerings.count == 0
  assert res2 == res


def test_evaluator_sorted_layers_and_subset():
  def shuffled_apply(v, x):
    logits, acts = affine_apply(v, x)
    # bf16 layer, like a mixed-precision model; metrics are float32.
    return logits, {
        "10_logits": acts["02_logits"].astype(jnp.bfloat16),
        "01_block1.1": acts["00_h1"],
        "05_block2.0": acts["01_h2"],
        "00_stem": x,
    }

  images = np.random.default_rng(1).normal(size=(12,) + IMG).astype(np.float32)
  ev = L.LinearityEvaluator(
      shuffled_apply,
      images,
      num_points=2,
      num_tuples=7,
      batch_size=16,
      key=0,
      grid=(0.3, 0.5),
      metrics=("interp_error",),
  )
  res = ev(_affine_vars())
  expected = ["00_stem", "01_block1.1", "05_block2.0", "10_logits"]
  assert res["layers"] == expected
  assert list(res["interp_error"]) == expected
  assert (
      "relative_error" not in res
      and "tangent_residual" not in res
      and "tangent_t" not in res
  )
  assert res["weights"] == [
      [pytest.approx(0.7), pytest.approx(0.3)],
      [0.5, 0.5],
  ]
  for layer in expected[:-1]:  # affine everywhere
    assert max(res["interp_error"][layer]["mean"]) < 1e-8
  # The bf16 layer is affine up to bf16 rounding (~2^-8 relative).
  bf16 = res["interp_error"]["10_logits"]
  assert np.all(np.isfinite(bf16["mean"] + bf16["stderr"]))
  assert max(bf16["mean"]) < 1e-3


def test_degenerate_tuples_have_no_per_tuple_value():
  """A constant layer: every normalized metric is NaN (no value), raw_gap 0."""

  def const_apply(v, x):
    z = jnp.full((x.shape[0], 3), 2.0) + 0.0 * x.reshape(x.shape[0], -1)[:, :3]
    return z, {"00_const": z, "01_x": x}

  x = _x_tuples(3, 2)
  out = _np(L.per_tuple_metrics(const_apply, {}, x, L.mixing_weights(2)))
  slow = L.naive_per_tuple_metrics(const_apply, {}, x, L.mixing_weights(2))
  for metric in L.NORMALIZED_METRICS:
    assert np.all(np.isnan(out[metric]["00_const"]))
    assert np.all(np.isnan(slow[metric]["00_const"]))
    assert np.all(np.isfinite(out[metric]["01_x"]))
  np.testing.assert_array_equal(out["raw_gap"]["00_const"], 0.0)


# ---------------------------------------------------------------------------
# (h) a path point that lands on the first point's representation


def _fold_apply(v, x):
  """h = x^2 maps x(t) = -0.5 onto h(0.5); the ReLU is dead for x < 0."""
  return x, {"00_square": x**2, "01_relu": jax.nn.relu(x)}


# x_1 = 0.5, x_2 = -2: x(0.4) = -0.5 (square: h(x(t)) == h(x_1)),
# x(0.2) = 0 (a regular point).  The tuple itself is not degenerate.
FOLD_WEIGHTS = [[0.6, 0.4], [0.8, 0.2]]


def test_tangent_step_onto_the_first_point_has_no_value():
  """README: a (tuple, t) whose tangent denominator ||h(x(t)) - h(x_1)||^2
  is negligible is left out of that t (not 8e10, not 0 "perfectly
  linear"); the other t and the other metrics keep the tuple."""
  x = jnp.asarray([[[0.5], [-2.0]], [[-1.0], [1.0]]], jnp.float32)  # (2, 2, 1)
  # The rule is relative to the representations' size: the same at 1e-3.
  for per_tuple, scale in (
      (L.per_tuple_metrics, 1.0),
      (L.naive_per_tuple_metrics, 1.0),
      (L.per_tuple_metrics, 1e-3),
  ):
    out = _np(per_tuple(_fold_apply, {}, scale * x, FOLD_WEIGHTS))
    square = out["tangent_residual"]["00_square"]  # (t, tuple)
    assert np.isnan(square[0, 0]), per_tuple.__name__  # h(-0.5) == h(0.5)
    # t = 0.2: x(t) = 0; residual (t^2 d^2)^2 / (2 t a d + t^2 d^2)^2 = 1.
    np.testing.assert_allclose(square[1, 0], 1.0, rtol=1e-5)
    # ReLU, x_1 = -1, x_2 = 1: x(0.4) = -0.2 and x(0.2) = -0.6 are dead like
    # x_1 (0 / 0, formerly scored 0); nothing else is.
    relu = out["tangent_residual"]["01_relu"]
    assert np.all(np.isnan(relu[:, 1])), per_tuple.__name__
    assert np.all(np.isfinite(relu[:, 0]))
    # The other metrics keep both tuples (but (-1, 1) at the square, which
    # maps them onto one point: a degenerate tuple).
    for metric in ("interp_error", "relative_error"):
      assert np.all(np.isfinite(out[metric]["01_relu"])), metric
      assert np.all(np.isfinite(out[metric]["00_square"][:, 0])), metric
      assert np.all(np.isnan(out[metric]["00_square"][:, 1])), metric


def test_evaluator_leaves_out_the_step_at_that_t_and_counts_it():
  images = np.asarray([[0.5], [-2.0]], np.float32)
  T = 8
  ev = L.LinearityEvaluator(
      _fold_apply,
      images,
      num_points=2,
      num_tuples=T,
      batch_size=3,  # a padded last batch, masked out
      key=2,
      weights=FOLD_WEIGHTS,
  )
  first_is_half = int(np.sum(ev.tuples[:, 0] == 0))  # x_1 = 0.5, x_2 = -2
  assert 0 < first_is_half < T
  rec = ev(None)
  square = rec["tangent_residual"]["00_square"]
  # t = 0.4 keeps only the tuples x_1 = -2, x_2 = 0.5: x(t) = -1,
  # residual ||h(-1) - 4 - 0.4 (-4)(2.5)||^2 / ||h(-1) - 4||^2 = 1 / 9.
  np.testing.assert_allclose(square["mean"][0], 1 / 9, rtol=1e-5)
  assert square["count_per_weight"] == [T - first_is_half, T]
  assert square["count"] == T - first_is_half
  assert square["degenerate"] == first_is_half
  # t = 0.2: 1 for x_1 = 0.5 (see above), 0.25^2 / 1.75^2 for x_1 = -2.
  want = (first_is_half + (T - first_is_half) * (0.25 / 1.75) ** 2) / T
  np.testing.assert_allclose(square["mean"][1], want, rtol=1e-5)
  # ReLU: x_1 = -2 is dead with both path points; x_1 = 0.5 scores 1 at
  # t = 0.4 (x(t) = -0.5) and 0 at t = 0.2 (x(t) = 0, the kink).
  relu = rec["tangent_residual"]["01_relu"]
  assert relu["count_per_weight"] == [first_is_half] * 2
  np.testing.assert_allclose(relu["mean"], [1.0, 0.0], atol=1e-6)
  # No tuple is degenerate: the other metrics keep them all.
  assert rec["degenerate"] == {"00_square": 0, "01_relu": 0}
  assert rec["interp_error"]["00_square"]["count"] == T
  assert rec["collapsed_layers"] == []
  # The table shows the count behind each t.
  table = L.results_table(rec)
  rows = table[
      (table.metric == "tangent_residual") & (table.layer == "00_square")
  ]
  assert rows["count"].tolist() == [T - first_is_half, T]
  assert rows["degenerate"].tolist() == [first_is_half, 0]


def test_nan_activations_poison_the_mean_not_the_counts():
  """A NaN representation (here log of a negative input) is a broken
  model, not a degenerate tuple: its mean is NaN and nothing is counted
  as left out (the evaluator marks left-out values with a negative
  sentinel, never with NaN)."""
  images = np.asarray([[0.5], [-2.0], [1.5], [3.0]], np.float32)
  ev = L.LinearityEvaluator(
      lambda v, x: (x, {"00_log": jnp.log(x)}),
      images,
      num_points=2,
      num_tuples=6,
      batch_size=4,
      key=0,
  )
  assert np.any(ev.tuples == 1)  # some tuple holds the negative input
  rec = ev(None)
  for metric in L.METRICS:
    stats = rec[metric]["00_log"]
    assert np.all(np.isnan(stats["mean"])), metric
    assert stats["degenerate"] == 0 and stats["count"] == 6, metric


def test_evaluator_counts_a_step_left_out_at_one_t_for_three_points():
  """K = 3: the tangent path runs from x_1 to x_2 over ``grid``; a tuple
  left out at one t is counted once, as for K = 2 (the rows of the
  tangent residual then differ in number from the weights')."""
  images = np.asarray([[0.5], [-2.0], [1.5]], np.float32)
  T = 12
  ev = L.LinearityEvaluator(
      _fold_apply,
      images,
      num_points=3,
      num_tuples=T,
      batch_size=5,  # a padded last batch, masked out
      key=4,
      grid=(0.4, 0.2, 0.5),  # three path parameters, two weights
      num_dirichlet=2,
  )
  # Only x_1 = 0.5, x_2 = -2 folds: x(0.4) = -0.5, h(x(0.4)) == h(x_1).
  folds = int(np.sum((ev.tuples[:, 0] == 0) & (ev.tuples[:, 1] == 1)))
  assert 0 < folds < T
  square = ev(None)["tangent_residual"]["00_square"]
  assert square["count_per_weight"] == [T - folds, T, T]
  assert square["count"] == T - folds
  assert square["degenerate"] == folds
