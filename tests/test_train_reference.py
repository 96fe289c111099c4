"""What the jitted train step computes, recomputed independently.

The other train tests compare the code with itself (1 vs 8 devices, resumed
vs uninterrupted, recomputed vs logged): they catch sharding and
nondeterminism bugs, never a wrong formula. Here one step of each regime is
recomputed from the definitions of README "Our definitions" with flax
``model.apply`` on the small CNN and plain jnp formulas, from a state chosen
so that mistakes show:

* the steps lie in later epochs (``step % steps_per_epoch != step``), one
  inside both the warm-up and the ramp-up, one after both, so the learning
  rate and the consistency weight are not 0 and not only their peaks;
* the EMA teacher's parameters and BatchNorm statistics differ from the
  student's, and running statistics differ from any batch's statistics, so
  using the wrong variables or the wrong BatchNorm mode changes the result;
* the momentum trace is non-zero, weight decay is large, every parameter
  (biases and BatchNorm scales included) is non-zero, and ``ema_decay`` is
  far from 1/2, so Nesterov, the decay mask and a swapped EMA formula show;
* every row of the epoch's index table differs, so the wrong row shows.

Random draws are recomputed from the key derivation documented in train.py
(root ``PRNGKey(seed)``, step stream 2 folded with the global step, split
into labelled augmentation, unlabelled augmentation and mixing). Mixing
tuples and weights come from ``mixup.sample_mixing`` and crops from
``data.random_crop_flip`` with those keys: both are tested on their own
(test_mixup_losses.py, test_data.py), and matching the step's outputs here
shows the step used exactly those draws.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixlin_jax import data as data_lib
from mixlin_jax import mixup, models, parallel, train

import helpers

SEED = 3
NUM_CLASSES = 10
NUM_LABELLED, NUM_UNLABELLED = 16, 32
BATCH, UNLABELLED_BATCH = 8, 16
STEPS_PER_EPOCH = (NUM_LABELLED + NUM_UNLABELLED) // BATCH  # 6
EPOCHS = 4  # 24 steps in all
WARMUP_EPOCHS, RAMPUP_EPOCHS = 2.0, 3.0  # 12 and 18 steps
MEAN, STD = 0.4, 0.3
# Step 9: epoch 2, row 3, mid warm-up and mid ramp-up. Step 20: epoch 4,
# row 2, cosine decay, ramp-up done.
STEPS = (9, 20)
# Augmentation per regime: crops with flips, neither, crops alone (as for
# digits), so that each switch is exercised once against the reference.
AUGMENTATION = {"erm": (1, True), "supmix3": (0, False), "mix3": (1, False)}
# float32 everywhere; the reference sums in a different order.
TOL = dict(rtol=1e-4, atol=1e-6)


def regime_config(regime: str):
  crop_padding, flip = AUGMENTATION[regime]
  c = helpers.default_config(
      f"smoke,{regime}", train__batch_size=BATCH,
      train__unlabelled_batch_size=UNLABELLED_BATCH, train__epochs=EPOCHS,
      train__warmup_epochs=WARMUP_EPOCHS, train__learning_rate=0.1,
      train__momentum=0.8, train__nesterov=True, train__weight_decay=0.05,
      train__ema_decay=0.7, mixup__consistency_weight=30.0,
      mixup__rampup_epochs=RAMPUP_EPOCHS, mixup__alpha=1.0,
      data__crop_padding=crop_padding, data__flip=flip,
      model__compute_dtype="float32")
  c.seed = SEED
  return c


@pytest.fixture(scope="module")
def split():
  rng = np.random.default_rng(0)
  image = lambda n: rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
  return data_lib.SemiSupervisedSplit(
      x_labelled=image(NUM_LABELLED),
      y_labelled=rng.permutation(np.arange(NUM_LABELLED) % NUM_CLASSES).astype(
          np.int32),
      x_unlabelled=image(NUM_UNLABELLED), x_test=image(8),
      y_test=np.arange(8, dtype=np.int32), num_classes=NUM_CLASSES,
      mean=np.array([MEAN], np.float32), std=np.array([STD], np.float32))


@pytest.fixture(scope="module")
def trainers(split):
  """One Trainer per regime, built on first use (each compiles its step once)."""
  cache = {}

  def get(regime):
    if regime not in cache:
      cache[regime] = train.Trainer(regime_config(regime), split,
                                    parallel.make_mesh(jax.devices()[:1]))
    return cache[regime]

  return get


def chosen_orders(trainer) -> dict:
  """Index tables whose rows all differ (any wrong row changes the batch)."""
  rng = np.random.default_rng(1)
  table = lambda n, b: np.stack(
      [rng.permutation(n)[:b] for _ in range(STEPS_PER_EPOCH)]).astype(np.int32)
  orders = {"labelled": table(NUM_LABELLED, BATCH)}
  if trainer.mode == "unsupervised":
    orders["unlabelled"] = table(NUM_UNLABELLED, UNLABELLED_BATCH)
  return parallel.put_replicated(orders, trainer.mesh)


def chosen_state(trainer, step: int) -> train.TrainState:
  """A state at ``step`` whose every part is known and visibly distinct.

  Only ``step`` (and the optimizer's step count) depend on ``step``.
  """
  rng = np.random.default_rng(2)
  model = models.get_model("cnn", NUM_CLASSES)
  dummy = jnp.zeros((1, 8, 8, 1), jnp.float32)
  noise = lambda tree, scale: jax.tree.map(
      lambda x: np.asarray(x, np.float32) + scale * rng.standard_normal(
          x.shape).astype(np.float32), tree)
  stats = lambda tree: {
      layer: {"mean": 0.3 * rng.standard_normal(v["mean"].shape).astype(
          np.float32), "var": rng.uniform(0.5, 2.0, v["var"].shape).astype(
              np.float32)} for layer, v in tree.items()}
  student = model.init(jax.random.PRNGKey(11), dummy, train=False)
  teacher = model.init(jax.random.PRNGKey(12), dummy, train=False)
  params = noise(student["params"], 0.1)
  trace = jax.tree.map(
      lambda p: 0.05 * rng.standard_normal(p.shape).astype(np.float32), params)
  opt_state = optax.tree_utils.tree_set(
      trainer.tx.init(params), count=np.asarray(step, np.int32), trace=trace)
  state = train.TrainState(
      step=np.asarray(step, np.int32), params=params,
      batch_stats=stats(student["batch_stats"]), opt_state=opt_state,
      ema_params=noise(teacher["params"], 0.1),
      ema_batch_stats=stats(teacher["batch_stats"]))
  return parallel.put_replicated(state, trainer.mesh)


# --------------------------------------------------------------------------
# The reference: README "Our definitions", written out.
# --------------------------------------------------------------------------


def reference_consistency_weight(config, steps_per_epoch: int,
                                 step: int) -> float:
  """``consistency_weight * exp(-5 (1 - t)^2)``, t the ramp-up fraction done."""
  rampup = round(config.mixup.rampup_epochs * steps_per_epoch)
  t = min(step / rampup, 1.0)
  return config.mixup.consistency_weight * math.exp(-5.0 * (1.0 - t)**2)


def reference_sgd(params, grads, trace, lr, t):
  """Kernel-only weight decay, then Nesterov SGD (optax's ``trace``).

  ``g = grad + wd * p`` for kernels (rank > 1) only; ``m' = g + mu * m``;
  update ``-lr * (g + mu * m')``.
  """
  decayed = jax.tree.map(
      lambda g, p: g + t.weight_decay * p if p.ndim > 1 else g, grads, params)
  new_trace = jax.tree.map(lambda g, m: g + t.momentum * m, decayed, trace)
  new_params = jax.tree.map(lambda p, g, m: p - lr * (g + t.momentum * m),
                            params, decayed, new_trace)
  return new_params, new_trace


def mix_rows(values, tuples, weights):
  """``out[b] = sum_k weights[b, k] * values[tuples[b, k]]`` in numpy."""
  values, tuples, weights = map(np.asarray, (values, tuples, weights))
  out = np.zeros(values.shape[:1] + values.shape[1:], np.float64)
  for k in range(tuples.shape[1]):
    w = weights[:, k].reshape((-1,) + (1,) * (values.ndim - 1))
    out += w * values[tuples[:, k]]
  return out.astype(np.float32)


def reference_step(config, split, state, orders) -> dict:
  """One training step from the definitions; returns every output to check."""
  state = jax.device_get(state)
  orders = jax.device_get(orders)
  step = int(state.step)
  row = step % STEPS_PER_EPOCH
  mode, k = config.mixup.mode, config.mixup.num_points
  num_classes = split.num_classes
  model = models.get_model("cnn", num_classes)
  key = jax.random.fold_in(
      jax.random.fold_in(jax.random.PRNGKey(config.seed), 2), step)
  key_aug_l, key_aug_u, key_mix = jax.random.split(key, 3)

  def augment(key, images):
    padding, flip = config.data.crop_padding, config.data.flip
    if padding or flip:
      images = np.asarray(data_lib.random_crop_flip(key, images, padding,
                                                    flip=flip))
    return ((images.astype(np.float32) / 255.0 - MEAN) / STD).astype(
        np.float32)

  idx_l = orders["labelled"][row]
  x_l = augment(key_aug_l, split.x_labelled[idx_l])
  y_l = split.y_labelled[idx_l]
  one_hot = np.eye(num_classes, dtype=np.float32)[y_l]
  inputs, targets = x_l, one_hot
  if mode == "supervised":
    tuples, weights = mixup.sample_mixing(key_mix, BATCH, k,
                                          config.mixup.alpha)
    inputs, targets = mix_rows(x_l, tuples, weights), mix_rows(
        one_hot, tuples, weights)
  cons_target = None
  if mode == "unsupervised":
    x_u = augment(key_aug_u, split.x_unlabelled[orders["unlabelled"][row]])
    teacher = {"params": state.ema_params,
               "batch_stats": state.ema_batch_stats}
    teacher_logits, _ = model.apply(teacher, x_u, train=False)  # inference BN
    teacher_probs = np.asarray(jax.nn.softmax(teacher_logits))
    tuples, weights = mixup.sample_mixing(key_mix, UNLABELLED_BATCH, k,
                                          config.mixup.alpha)
    cons_target = mix_rows(teacher_probs, tuples, weights)
    inputs = np.concatenate([x_l, mix_rows(x_u, tuples, weights)])
  weight = reference_consistency_weight(config, STEPS_PER_EPOCH, step)

  def loss_fn(params):
    (logits, _), updated = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, inputs,
        train=True, mutable=["batch_stats"])
    logits_l = logits[:BATCH]
    supervised = -jnp.mean(
        jnp.sum(targets * jax.nn.log_softmax(logits_l), axis=-1))
    consistency = jnp.zeros(())
    if cons_target is not None:
      # Mean over examples *and* classes.
      consistency = jnp.mean(
          (jax.nn.softmax(logits[BATCH:]) - cons_target)**2)
    return supervised + weight * consistency, (supervised, consistency,
                                               logits_l, updated)

  (loss, (supervised, consistency, logits_l, updated)), grads = (
      jax.value_and_grad(loss_fn, has_aux=True)(state.params))
  lr = helpers.reference_learning_rate(config, STEPS_PER_EPOCH, step)
  trace = optax.tree_utils.tree_get(state.opt_state, "trace")
  params, new_trace = reference_sgd(state.params, grads, trace, lr,
                                    config.train)
  decay = config.train.ema_decay
  ema = lambda e, p: decay * e + (1.0 - decay) * p
  batch_stats = updated["batch_stats"]
  accuracy = np.mean(
      np.argmax(logits_l, -1) == np.argmax(targets, -1))
  return dict(
      loss=loss, supervised=supervised, consistency=consistency,
      consistency_weight=weight, train_accuracy=accuracy, params=params,
      trace=new_trace, batch_stats=batch_stats,
      ema_params=jax.tree.map(ema, state.ema_params, params),
      ema_batch_stats=jax.tree.map(ema, state.ema_batch_stats, batch_stats),
      learning_rate=lr)


def assert_trees_close(actual, expected, name, **tol):
  actual, expected = jax.device_get((actual, expected))
  assert jax.tree.structure(actual) == jax.tree.structure(expected), name
  for (path, a), b in zip(jax.tree.flatten_with_path(actual)[0],
                          jax.tree.leaves(expected)):
    np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), err_msg=name + jax.tree_util.keystr(path),
        **(tol or TOL))


def max_change(before, after) -> float:
  return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(jax.device_get(before)),
                             jax.tree.leaves(jax.device_get(after))))


# --------------------------------------------------------------------------
# 1. One step against the reference.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("regime", ["erm", "supmix3", "mix3"])
def test_one_step_matches_the_definitions(trainers, split, regime, step):
  trainer = trainers(regime)
  config = trainer.config
  state, orders = chosen_state(trainer, step), chosen_orders(trainer)
  expected = reference_step(config, split, state, orders)
  before = jax.device_get(state)
  new_state, sums = trainer.train_step(state, trainer.zero_sums(),
                                       trainer.data, orders)
  sums = jax.device_get(sums)

  # The setting is not degenerate: the learning rate and the consistency
  # weight are strictly between 0 and their peaks or past the warm-up,
  # and the step moves every kind of variable by much more than TOL.
  assert 0 < expected["learning_rate"] <= config.train.learning_rate
  assert 0 < expected["consistency_weight"] <= config.mixup.consistency_weight
  assert max_change(before.params, expected["params"]) > 1e-3
  if trainer.mode == "unsupervised":
    assert float(expected["consistency"]) > 1e-3

  assert int(sums["count"]) == 1 and int(sums["nonfinite_steps"]) == 0
  for name in ("loss", "supervised", "consistency", "consistency_weight",
               "train_accuracy"):
    np.testing.assert_allclose(sums[name], expected[name], err_msg=name, **TOL)
  assert int(new_state.step) == step + 1
  assert_trees_close(new_state.params, expected["params"], "params")
  assert_trees_close(new_state.batch_stats, expected["batch_stats"],
                     "batch_stats")
  assert_trees_close(new_state.ema_params, expected["ema_params"],
                     "ema_params")
  assert_trees_close(new_state.ema_batch_stats, expected["ema_batch_stats"],
                     "ema_batch_stats")
  assert_trees_close(
      optax.tree_utils.tree_get(new_state.opt_state, "trace"),
      expected["trace"], "momentum trace")
  assert int(optax.tree_utils.tree_get(new_state.opt_state, "count")) == (
      step + 1)


# --------------------------------------------------------------------------
# 2. The optimizer.
# --------------------------------------------------------------------------


def test_weight_decay_reaches_kernels_only():
  """With zero gradients and momentum, only kernels move (by lr * wd * p)."""
  config = regime_config("erm")
  tx = train.make_optimizer(config, STEPS_PER_EPOCH)
  rng = np.random.default_rng(3)
  params = jax.tree.map(
      lambda p: rng.standard_normal(p.shape).astype(np.float32),
      models.get_model("cnn", NUM_CLASSES).init(
          jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
      ["params"])
  step = STEPS[0]
  opt_state = optax.tree_utils.tree_set(tx.init(params),
                                        count=np.asarray(step, np.int32))
  updates, _ = tx.update(jax.tree.map(np.zeros_like, params), opt_state,
                         params)
  lr = helpers.reference_learning_rate(config, STEPS_PER_EPOCH, step)
  t = config.train
  decayed = set()
  for (path, update), p in zip(jax.tree.flatten_with_path(updates)[0],
                               jax.tree.leaves(params)):
    name = jax.tree_util.keystr(path)
    if path[-1].key == "kernel":
      decayed.add(path[-2].key)
      # Nesterov on a fresh trace: g + mu * g, with g = wd * p.
      np.testing.assert_allclose(
          update, -lr * t.weight_decay * (1 + t.momentum) * p, rtol=1e-5,
          err_msg=name)
    else:
      np.testing.assert_array_equal(update, 0.0, err_msg=name)
  assert decayed == {"conv1", "conv2", "conv3", "head"}


def test_nesterov_and_schedule_match_the_reference_formulas():
  """Twelve steps (2 of warm-up, 10 of cosine) and two past the end."""
  spe = 4
  config = helpers.default_config(
      "smoke,erm", train__epochs=3, train__warmup_epochs=0.5,
      train__learning_rate=0.2, train__momentum=0.85, train__nesterov=True,
      train__weight_decay=0.01)
  total = config.train.epochs * spe
  # Anchors of "linear warm-up from 0, then cosine decay to 0".
  lr = lambda s: helpers.reference_learning_rate(config, spe, s)
  assert (lr(0), lr(1), lr(2), lr(total)) == (0.0, 0.1, 0.2, 0.0)
  assert lr(7) == pytest.approx(0.1)  # half-way through the decay
  for s in range(total + 2):
    assert train.learning_rate_at(config, spe, s) == pytest.approx(
        lr(s), rel=1e-5, abs=1e-9), s  # float32

  tx = train.make_optimizer(config, spe)
  rng = np.random.default_rng(4)
  params = {"dense": {"kernel": rng.standard_normal((3, 2)).astype(np.float32),
                      "bias": rng.standard_normal(2).astype(np.float32)},
            "bn": {"scale": rng.standard_normal(2).astype(np.float32)}}
  opt_state = tx.init(params)
  ref_params = params
  ref_trace = jax.tree.map(np.zeros_like, params)
  update = jax.jit(tx.update)
  for s in range(total + 2):
    grads = jax.tree.map(
        lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
    updates, opt_state = update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ref_params, ref_trace = reference_sgd(ref_params, grads, ref_trace, lr(s),
                                          config.train)
    assert_trees_close(params, ref_params, f"params after step {s}",
                       rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# 3. Random streams.
# --------------------------------------------------------------------------

# What only the step's random draws change when the state and the batch are
# fixed: erm's loss sees the labelled augmentation, supmix3's (no
# augmentation) the mixing, mix3's consistency the unlabelled augmentation
# and the mixing.
RANDOM_OBSERVABLE = {"erm": "supervised", "supmix3": "supervised",
                     "mix3": "consistency"}


@pytest.mark.parametrize("regime", ["erm", "supmix3", "mix3"])
def test_draws_differ_between_steps_and_epochs_and_repeat_exactly(
    trainers, split, regime):
  trainer = trainers(regime)
  # Every row the same batch: only the draws can differ between steps.
  orders = {name: np.tile(table[:1], (STEPS_PER_EPOCH, 1))
            for name, table in jax.device_get(chosen_orders(trainer)).items()}
  orders = parallel.put_replicated(orders, trainer.mesh)

  def run(t, step):
    state, sums = t.train_step(chosen_state(t, step), t.zero_sums(), t.data,
                               orders)
    return jax.device_get((state, sums))

  step = STEPS[0]
  observed = {s: float(run(trainer, s)[1][RANDOM_OBSERVABLE[regime]])
              for s in (step, step + 1, step + STEPS_PER_EPOCH)}
  assert len(set(observed.values())) == 3, observed  # next step, next epoch

  # The same (seed, epoch, step) gives the same step, bit for bit, also in a
  # Trainer built afresh (a resumed process).
  first = run(trainer, step)
  helpers.assert_trees_bit_identical(first, run(trainer, step))
  fresh = train.Trainer(trainer.config, split, trainer.mesh)
  helpers.assert_trees_bit_identical(first, run(fresh, step))


def test_epoch_orders_are_fresh_permutations_each_epoch(trainers, split):
  trainer = trainers("mix3")
  orders = lambda t, e: jax.device_get(
      t.epoch_orders(jnp.asarray(e, jnp.int32)))
  epochs = [orders(trainer, e) for e in range(3)]
  for table, size, batch in (("labelled", NUM_LABELLED, BATCH),
                             ("unlabelled", NUM_UNLABELLED, UNLABELLED_BATCH)):
    for e, o in enumerate(epochs):
      assert o[table].shape == (STEPS_PER_EPOCH, batch)
      # An epoch is whole passes here: each is a permutation of the set, and
      # the passes of one epoch are not the same order.
      passes = o[table].reshape(-1, size)
      for p in passes:
        np.testing.assert_array_equal(np.sort(p), np.arange(size))
      assert not np.array_equal(passes[0], passes[1]), (table, e)
    for a in range(3):
      for b in range(a):
        assert not np.array_equal(epochs[a][table], epochs[b][table]), (a, b)
  # The labelled and unlabelled streams are not one stream.
  assert not np.array_equal(epochs[0]["labelled"].reshape(-1)[:NUM_LABELLED],
                            epochs[0]["unlabelled"].reshape(-1)[:NUM_LABELLED])

  # Same (seed, epoch), same order, in a Trainer built afresh; another seed,
  # another order.
  fresh = train.Trainer(trainer.config, split, trainer.mesh)
  helpers.assert_trees_bit_identical(orders(fresh, 1), epochs[1])
  other_config = regime_config("mix3")
  other_config.seed = SEED + 1
  other = train.Trainer(other_config, split, trainer.mesh)
  assert not np.array_equal(orders(other, 1)["labelled"], epochs[1]["labelled"])
