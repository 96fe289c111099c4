"""The train step: compiled once, bf16 close to f32, checkpoints round-trip, run.py end to end."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixlin_jax import checkpoints, parallel, train

import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def split():
  return train.load_split(helpers.default_config())


def one_device_mesh():
  return parallel.make_mesh(jax.devices()[:1])


@pytest.mark.parametrize("regime", ["erm", "supmix2", "mix3"])
def test_train_step_compiles_once_and_learns(split, regime):
  config = helpers.default_config(f"smoke,{regime}")
  trainer = train.Trainer(config, split, one_device_mesh())
  state = trainer.init_state()
  sums = trainer.zero_sums()
  first_loss = None
  for epoch in range(2):
    orders = trainer.epoch_orders(jnp.asarray(epoch, jnp.int32))
    for _ in range(trainer.steps_per_epoch):
      state, sums = trainer.train_step(state, sums, trainer.data, orders)
    summary = train._summarize_sums(sums)  # pylint: disable=protected-access
    first_loss = first_loss or summary["loss"]
  assert trainer.train_step._cache_size() == 1  # pylint: disable=protected-access
  assert int(state.step) == 2 * trainer.steps_per_epoch
  assert summary["nonfinite_steps"] == 0
  assert summary["loss"] < first_loss
  if regime == "mix3":
    assert summary["consistency"] > 0


def test_bf16_and_f32_steps_agree(split):
  """One step from the same state moves the parameters alike in both dtypes.

  No warm-up, so the first step's learning rate is the peak: with the
  default warm-up it is 0 and the step would not move the parameters at all.
  """
  steps = {}
  for dtype in ("float32", "bfloat16"):
    config = helpers.default_config("smoke,mix2", model__compute_dtype=dtype,
                                    train__warmup_epochs=0.0)
    trainer = train.Trainer(config, split, one_device_mesh())
    state = trainer.init_state()
    before = jax.device_get(state.params)
    sums = trainer.zero_sums()
    orders = trainer.epoch_orders(jnp.asarray(0, jnp.int32))
    state, sums = trainer.train_step(state, sums, trainer.data, orders)
    steps[dtype] = (before, jax.device_get(state.params),
                    train._summarize_sums(sums))  # pylint: disable=protected-access
  (init32, p32, m32), (init16, p16, m16) = steps["float32"], steps["bfloat16"]
  assert m16["loss"] == pytest.approx(m32["loss"], rel=0.02)
  for (keypath, a), a0, b0, b in zip(
      jax.tree.flatten_with_path(p32)[0], jax.tree.leaves(init32),
      jax.tree.leaves(init16), jax.tree.leaves(p16)):
    name = jax.tree_util.keystr(keypath)
    np.testing.assert_array_equal(a0, b0, err_msg=name)  # same start
    assert a.dtype == b.dtype == jnp.float32  # params stay f32 under bf16 compute
    step32, step16 = a - a0, b - a0
    # Every leaf moved (by 1e-3 to 2e-2 here), and bf16 moved it the same
    # way up to bf16's rounding (measured: at most 8% of the step's norm).
    assert np.abs(step32).max() > 5e-4, name
    assert np.linalg.norm(step16 - step32) < 0.2 * np.linalg.norm(step32), name


def test_checkpoint_round_trip_restores_identical_state(split, tmp_path):
  config = helpers.default_config("smoke,mix3")
  trainer = train.Trainer(config, split, one_device_mesh())
  state = trainer.init_state()
  sums = trainer.zero_sums()
  orders = trainer.epoch_orders(jnp.asarray(0, jnp.int32))
  for _ in range(3):
    state, sums = trainer.train_step(state, sums, trainer.data, orders)
  ckpts = checkpoints.Checkpoints(str(tmp_path / "ckpt"))
  ckpts.save(1, state, {"epoch": 1, "note": "x"})
  ckpts.close()
  reader = checkpoints.Checkpoints(str(tmp_path / "ckpt"), read_only=True)
  assert reader.epochs() == [1]
  restored, metrics = reader.restore(1, trainer.init_state())
  assert metrics == {"epoch": 1, "note": "x"}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The restored state trains on exactly like the original.
  s1, _ = trainer.train_step(state, trainer.zero_sums(), trainer.data, orders)
  s2, _ = trainer.train_step(restored, trainer.zero_sums(), trainer.data, orders)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_run_py_end_to_end_writes_metrics_and_checkpoints(tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "run.py"),
         "--config=" + os.path.join(ROOT, "configs", "default.py") + ":smoke",
         f"--workdir={workdir}", "--progress=false",
         "--config.train.epochs=2"]
  env = dict(os.environ, XLA_FLAGS="")  # one CPU device, like a laptop
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Done: 2 epochs" in out.stdout
  records = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [r["epoch"] for r in records] == [1, 2]
  for r in records:
    assert 0.0 <= r["test"]["student_accuracy"] <= 1.0
    assert r["images_per_second"] > 0
    layers = r["linearity"]["layers"]
    assert layers == sorted(layers) and "04_logits" in layers
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]
  recorded = json.load(open(workdir / "config.json"))
  assert recorded["config"]["train.epochs"] == 2
  assert recorded["versions"]["jax"] == jax.__version__
  # Rerunning a finished run resumes at the end and trains nothing more.
  again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert len(open(workdir / "metrics.jsonl").readlines()) == 2
