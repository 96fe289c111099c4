"""Mixing weights, K-tuples, label mixing and the losses built on them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixlin_jax import losses, mixup


@pytest.mark.parametrize("k,alpha", [(1, 0.5), (2, 0.5), (3, 1.0), (5, 2.0)])
def test_weights_lie_on_the_simplex(k, alpha):
  w = mixup.dirichlet_weights(jax.random.PRNGKey(0), 1000, k, alpha)
  assert w.shape == (1000, k)
  assert np.all(np.asarray(w) >= 0)
  np.testing.assert_allclose(np.asarray(w).sum(1), 1.0, atol=1e-5)


def test_two_points_is_classic_beta_mixup():
  # Dirichlet(a, a) marginal is Beta(a, a): compare moments of both.
  alpha = 0.4
  w = np.asarray(mixup.dirichlet_weights(jax.random.PRNGKey(1), 20000, 2, alpha))
  lam = np.asarray(jax.random.beta(jax.random.PRNGKey(2), alpha, alpha, (20000,)))
  assert abs(w[:, 0].mean() - 0.5) < 0.01
  assert abs(w[:, 0].var() - lam.var()) < 0.01
  expected_var = alpha * alpha / ((2 * alpha) ** 2 * (2 * alpha + 1))
  assert abs(w[:, 0].var() - expected_var) < 0.01


def test_uniform_dirichlet_shortcut_has_the_right_moments():
  # alpha=1 takes the exponential shortcut: Dirichlet(1,1,1) has mean 1/3 and
  # variance (1/3)(2/3)/4 per coordinate.
  w = np.asarray(mixup.dirichlet_weights(jax.random.PRNGKey(11), 40000, 3, 1.0))
  np.testing.assert_allclose(w.mean(0), 1 / 3, atol=0.01)
  np.testing.assert_allclose(w.var(0), (1 / 3) * (2 / 3) / 4, atol=0.005)


def test_tuples_are_permutations_with_identity_first():
  idx = np.asarray(mixup.tuple_indices(jax.random.PRNGKey(3), 16, 4))
  assert idx.shape == (16, 4)
  np.testing.assert_array_equal(idx[:, 0], np.arange(16))
  for j in range(4):
    assert sorted(idx[:, j]) == list(range(16))
  assert not np.array_equal(idx[:, 1], idx[:, 2])


def test_mixed_labels_are_the_same_mixture_as_inputs():
  key = jax.random.PRNGKey(4)
  labels = jnp.arange(8) % 3
  # Inputs that encode their label, so a mixture of inputs is readable.
  x = jax.nn.one_hot(labels, 3)[:, None, None, :] * jnp.ones((8, 2, 2, 3))
  idx, w = mixup.sample_mixing(key, 8, 3, 1.0)
  mixed_x = mixup.mix(x, idx, w)
  mixed_y = mixup.mix(jax.nn.one_hot(labels, 3), idx, w)
  np.testing.assert_allclose(mixed_x[:, 0, 0, :], mixed_y, atol=1e-6)
  manual = sum(w[:, j, None] * jax.nn.one_hot(labels[idx[:, j]], 3)
               for j in range(3))
  np.testing.assert_allclose(mixed_y, manual, atol=1e-6)


def test_one_point_mix_is_identity():
  x = jax.random.normal(jax.random.PRNGKey(5), (6, 3))
  idx, w = mixup.sample_mixing(jax.random.PRNGKey(6), 6, 1, 1.0)
  np.testing.assert_allclose(mixup.mix(x, idx, w), x)


def test_consistency_is_zero_for_linear_model_and_agreeing_teacher():
  # For a model that is linear in its input *probabilities* (student ==
  # teacher, output probs affine in x), the mixture of predictions equals the
  # prediction of the mixture, so the ICT consistency loss vanishes.
  x = jax.random.dirichlet(jax.random.PRNGKey(7), jnp.ones(4), (32,))  # rows are probabilities
  a = jax.random.dirichlet(jax.random.PRNGKey(8), jnp.ones(4), (4,))  # row-stochastic
  probs = lambda v: v @ a  # linear, maps simplex to simplex
  logits = lambda v: jnp.log(probs(v))
  idx, w = mixup.sample_mixing(jax.random.PRNGKey(9), 32, 3, 1.0)
  target = mixup.mix(probs(x), idx, w)
  loss = losses.consistency_mse(logits(mixup.mix(x, idx, w)), target)
  assert float(loss) < 1e-10
  # ... and a nonlinear student does not get zero.
  loss_nl = losses.consistency_mse(logits(mixup.mix(x, idx, w)) ** 2, target)
  assert float(loss_nl) > 1e-4


def test_consistency_has_no_gradient_through_teacher():
  s = jnp.array([[1.0, 2.0, 0.5]])
  t = jnp.array([[0.2, 0.3, 0.5]])
  g = jax.grad(lambda tt: losses.consistency_mse(s, tt))(t)
  np.testing.assert_array_equal(g, 0.0)


def test_soft_cross_entropy_matches_hard_for_one_hot():
  logits = jax.random.normal(jax.random.PRNGKey(10), (5, 4))
  y = jnp.array([0, 1, 2, 3, 1])
  np.testing.assert_allclose(
      losses.soft_cross_entropy(logits, jax.nn.one_hot(y, 4)),
      losses.cross_entropy(logits, y), rtol=1e-6)


def test_sigmoid_rampup_shape():
  assert float(losses.sigmoid_rampup(0, 100)) == pytest.approx(np.exp(-5.0))
  assert float(losses.sigmoid_rampup(100, 100)) == pytest.approx(1.0)
  assert float(losses.sigmoid_rampup(500, 100)) == pytest.approx(1.0)
  assert float(losses.sigmoid_rampup(50, 100)) == pytest.approx(np.exp(-1.25))
  assert float(losses.sigmoid_rampup(3, 0)) == 1.0
