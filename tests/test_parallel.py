"""Data parallelism: 1 vs 8 devices agree, and two real processes on localhost.

Runs on one CPU machine. The 8 devices are fake (``conftest.py`` sets
``--xla_force_host_platform_device_count=8``); the two-process test starts
two real JAX processes that talk over loopback (coordinator on 127.0.0.1,
CPU collectives over gloo, JAX's default on CPU) with 2 fake devices each.
"""
import json
import os
import re
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixlin_jax import checkpoints as ckpt_lib
from mixlin_jax import data as data_lib
from mixlin_jax import linearity, parallel, train

import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = dict(rtol=2e-4, atol=2e-5)  # float reassociation of all-reduces


def assert_trees_close(a, b, **tol):
  la, ta = jax.tree.flatten(jax.device_get(a))
  lb, tb = jax.tree.flatten(jax.device_get(b))
  assert ta == tb
  for i, (x, y) in enumerate(zip(la, lb)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=f"leaf {i}",
                               **(tol or TOL))


@pytest.fixture(scope="module")
def tiny_split():
  """A generated 8x8 grey split: 40 labelled, 88 unlabelled, 24 test images."""
  rng = np.random.default_rng(0)
  arrays = data_lib.ArraySplits(
      x_train=rng.integers(0, 256, (128, 8, 8, 1), dtype=np.uint8),
      y_train=np.repeat(np.arange(10, dtype=np.int32), 13)[:128],
      x_test=rng.integers(0, 256, (24, 8, 8, 1), dtype=np.uint8),
      y_test=np.arange(24, dtype=np.int32) % 10,
      num_classes=10)
  return data_lib.semi_supervised_split(arrays, 40, seed=0)


def _run_steps(config, split, devices, num_steps):
  trainer = train.Trainer(config, split, parallel.make_mesh(devices))
  state, sums = trainer.init_state(), trainer.zero_sums()
  orders = trainer.epoch_orders(jnp.asarray(0, jnp.int32))
  for _ in range(num_steps):
    state, sums = trainer.train_step(state, sums, trainer.data, orders)
  return trainer, state, sums


@pytest.mark.parametrize("regime", ["erm", "supmix2", "mix3"])
def test_one_and_eight_devices_give_the_same_step(tiny_split, regime):
  config = helpers.default_config(f"smoke,{regime}", train__ema_decay=0.5)
  assert len(jax.devices()) >= 8
  _, state1, sums1 = _run_steps(config, tiny_split, jax.devices()[:1], 2)
  trainer8, state8, sums8 = _run_steps(config, tiny_split, jax.devices()[:8], 2)

  assert trainer8.mesh.size == 8
  # Everything in the state stays replicated; nothing is left sharded.
  for leaf in jax.tree.leaves(state8):
    assert leaf.sharding.is_fully_replicated
    assert len(leaf.sharding.device_set) == 8
  s1, s8 = train._summarize_sums(sums1), train._summarize_sums(sums8)  # pylint: disable=protected-access
  assert s1["nonfinite_steps"] == s8["nonfinite_steps"] == 0
  for key in ("loss", "supervised", "consistency", "train_accuracy"):
    np.testing.assert_allclose(s8[key], s1[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # Parameters moved, and moved identically (BatchNorm statistics included:
  # they are global-batch statistics on 8 devices as on 1).
  assert int(state8.step) == 2
  assert_trees_close(state8, state1)
  if regime == "mix3":
    assert s8["consistency"] > 0


def _mlp_apply(variables, x):
  x = x.reshape(x.shape[0], -1)
  h1 = jnp.tanh(x @ variables["w1"])
  h2 = jax.nn.relu(h1 @ variables["w2"])
  return h2 @ variables["w3"], {"h1": h1, "h2": h2}


@pytest.mark.parametrize("num_points", [2, 3])
def test_linearity_evaluator_sharded_matches_unsharded(tiny_split, num_points):
  rng = np.random.default_rng(1)
  variables = {"w1": rng.normal(size=(64, 16)).astype(np.float32) / 8,
               "w2": rng.normal(size=(16, 16)).astype(np.float32) / 4,
               "w3": rng.normal(size=(16, 10)).astype(np.float32) / 4}
  images = tiny_split.x_test
  kwargs = dict(num_points=num_points, num_tuples=20, batch_size=8, key=3,
                num_dirichlet=3, preprocess=lambda x: x.astype(jnp.float32) / 255)
  plain = linearity.LinearityEvaluator(_mlp_apply, images, **kwargs)
  mesh8 = parallel.make_mesh(jax.devices()[:8])
  sharded = linearity.LinearityEvaluator(_mlp_apply, images, mesh=mesh8, **kwargs)
  one = linearity.LinearityEvaluator(
      _mlp_apply, images, mesh=parallel.make_mesh(jax.devices()[:1]), **kwargs)

  ref = plain(variables)
  for out in (sharded(variables), one(variables)):
    assert out["layers"] == ref["layers"] == ["h1", "h2"]
    for metric in linearity.METRICS:
      for layer in ref["layers"]:
        for stat in ("mean", "stderr"):
          np.testing.assert_allclose(out[metric][layer][stat],
                                     ref[metric][layer][stat], rtol=1e-4,
                                     atol=1e-6, err_msg=f"{metric}/{layer}")
  # The work really is split: the compiled program holds collectives (an
  # unsharded program over replicated inputs needs none), and its inputs
  # live on all 8 devices.
  assert len(sharded.images.sharding.device_set) == 8
  hlo = sharded._run.lower(  # pylint: disable=protected-access
      variables, sharded.images, sharded._tuples_dev, sharded._mask_dev,  # pylint: disable=protected-access
      sharded._weights_dev, sharded._tangent_dev).compile().as_text()  # pylint: disable=protected-access
  assert re.search(r"all-reduce|all-gather|reduce-scatter", hlo)


def test_put_replicated_places_identical_full_copies(tiny_split):
  mesh = parallel.make_mesh(jax.devices()[:8])
  tree = {"x": tiny_split.x_test, "y": tiny_split.y_test}
  placed = parallel.put_replicated(tree, mesh)
  for key, leaf in placed.items():
    assert leaf.sharding == parallel.replicated(mesh)
    assert len(leaf.addressable_shards) == 8
    for shard in leaf.addressable_shards:
      np.testing.assert_array_equal(np.asarray(shard.data), tree[key])
  fp = parallel.fingerprint(tree)
  assert fp.shape == (2,) and np.array_equal(fp, parallel.fingerprint(tree))
  changed = dict(tree, x=tree["x"].copy())
  changed["x"][0, 0, 0, 0] ^= 1
  assert not np.array_equal(fp, parallel.fingerprint(changed))


# --------------------------------------------------------------------------
# Two real processes on localhost.
# --------------------------------------------------------------------------

# Run as `python -c _WORKER <stop_after_epochs> <workdir>`; the process
# count, id and coordinator come from the JAX_* environment variables, as
# they would on a cluster (see parallel.maybe_initialize_distributed).
_WORKER = r"""
import json, os, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
sys.path[:0] = [os.environ["MIXLIN_TEST_ROOT"],
                os.path.join(os.environ["MIXLIN_TEST_ROOT"], "tests")]
from mixlin_jax import parallel
parallel.maybe_initialize_distributed()  # auto: JAX_COORDINATOR_ADDRESS is set
from mixlin_jax import train
from test_parallel import two_process_config

stop_after, workdir = int(sys.argv[1]), sys.argv[2]
class Stop(Exception):
  pass
trained = []
def on_epoch_end(record):
  trained.append(record["epoch"])
  if record["epoch"] >= stop_after:
    raise Stop()
try:
  train.train_and_evaluate(two_process_config(), workdir, progress=False,
                           on_epoch_end=on_epoch_end)
except Stop:
  pass
print("RESULT " + json.dumps({
    "process_index": jax.process_index(), "process_count": jax.process_count(),
    "devices": jax.device_count(), "local_devices": jax.local_device_count(),
    "trained_epochs": trained}), flush=True)
"""


def two_process_config():
  """Digits, 3-point unsupervised mixup, linearity on; 2 epochs of 12 steps."""
  return helpers.default_config("smoke", data__num_train=200, eval__batch_size=120)


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two_processes(stop_after: int, workdir: str, timeout: float,
                       cache_dir: str) -> list[dict]:
  port = _free_port()
  env = dict(os.environ)
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                            env.get("XLA_FLAGS", "")).strip()
  env.update(JAX_PLATFORMS="cpu", MIXLIN_TEST_ROOT=ROOT,
             JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
             JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             PYTHONPATH=os.pathsep.join(
                 filter(None, [ROOT, env.get("PYTHONPATH", "")])))
  env.pop("JAX_PROCESS_COUNT", None)
  procs = []
  for pid in range(2):
    procs.append(subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(stop_after), workdir],
        env=dict(env, JAX_PROCESS_ID=str(pid)), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  deadline = time.monotonic() + timeout
  outputs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=max(deadline - time.monotonic(), 1))
      outputs.append(out)
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    tails = [(p.communicate()[0] or "")[-3000:] for p in procs]
    pytest.fail(f"two-process run timed out after {timeout}s:\n" +
                "\n----\n".join(tails))
  results = []
  for p, out in zip(procs, outputs):
    lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
    assert p.returncode == 0 and lines, f"worker failed:\n{out[-5000:]}"
    results.append(json.loads(lines[-1][len("RESULT "):]))
  return sorted(results, key=lambda r: r["process_index"])


@pytest.mark.skipif(os.environ.get("MIXLIN_SKIP_MULTIPROCESS") == "1",
                    reason="MIXLIN_SKIP_MULTIPROCESS=1")
def test_two_processes_train_resume_and_match_one_process(tmp_path):
  """About 2-4 minutes on two busy CPU cores (three runs' compiles)."""
  config = two_process_config()
  workdir2 = str(tmp_path / "two_process")
  cache = str(tmp_path / "jax_cache")

  # Epoch 1, then a clean stop; then a fresh pair of processes resumes from
  # the checkpoint they wrote together and runs epoch 2.
  first = _run_two_processes(1, workdir2, timeout=400, cache_dir=cache)
  for r, pid in zip(first, (0, 1)):
    assert r == {"process_index": pid, "process_count": 2, "devices": 4,
                 "local_devices": 2, "trained_epochs": [1]}
  second = _run_two_processes(99, workdir2, timeout=300, cache_dir=cache)
  assert [r["trained_epochs"] for r in second] == [[2], [2]]

  # The same experiment in this process on 8 devices, uninterrupted.
  workdir1 = str(tmp_path / "one_process")
  records1 = train.train_and_evaluate(config, workdir1, progress=False)
  assert len(records1) == 2

  records2 = [json.loads(l) for l in open(os.path.join(workdir2, "metrics.jsonl"))]
  assert [r["epoch"] for r in records2] == [1, 2]  # process 0 wrote, once each
  for r1, r2 in zip(records1, records2):
    assert r1["step"] == r2["step"]
    for key in ("loss", "supervised", "consistency"):
      # The consistency loss is ~1e-3: compare it with an absolute tolerance.
      np.testing.assert_allclose(r2["train"][key], r1["train"][key],
                                 rtol=1e-4, atol=1e-5, err_msg=key)
    for key, value in r1["test"].items():
      # Accuracies may differ by one of the 360 test images in a near tie.
      np.testing.assert_allclose(r2["test"][key], value, rtol=1e-4,
                                 atol=3e-3 if "accuracy" in key else 1e-4,
                                 err_msg=key)
    lin1, lin2 = r1["linearity"], r2["linearity"]
    for layer in lin1["layers"]:
      np.testing.assert_allclose(lin2["interp_error"][layer]["mean"],
                                 lin1["interp_error"][layer]["mean"],
                                 rtol=1e-3, atol=1e-6)

  # The final states: the two-process checkpoint restores here, on another
  # device count, and equals the single-process one.
  trainer = train.Trainer(config, train.load_split(config))
  target = trainer.init_state()
  states = []
  for workdir in (workdir1, workdir2):
    ckpts = ckpt_lib.Checkpoints(os.path.join(workdir, "checkpoints"),
                                 read_only=True)
    assert ckpts.epochs() == [1, 2]
    states.append(ckpts.restore(2, target)[0])
    ckpts.close()
  assert int(states[1].step) == int(states[0].step) == 2 * trainer.steps_per_epoch
  assert_trees_close(states[1], states[0], rtol=1e-3, atol=1e-5)
