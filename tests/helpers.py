"""Small utilities shared by the tests (import as ``import helpers``).

The tiny config is ``configs/default.py:smoke`` shrunk further so that an
epoch takes well under a second on two CPU cores, with every part of the
epoch (train steps, evaluation, linearity) still switched on. The same
overrides are available as ``--config.*`` flags for ``experiments/run.py``
subprocesses, so in-process and subprocess runs compute the same thing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(ROOT, "experiments", "run.py")
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "default.py")

# Fields of the per-epoch record that measure wall time (differ run to run).
TIMING_FIELDS = ("seconds", "images_per_second")

# On top of `:smoke`. Batch sizes stay multiples of 8 (the fake CPU devices
# of conftest.py).
TINY_OVERRIDES = {
    "train.epochs": 4,
    "data.num_train": 400,   # 360 unlabelled + 40 labelled: 25 steps/epoch
    "data.num_test": 64,
    "train.log_every_steps": 10,
    "linearity.num_tuples": 8,
    "linearity.num_dirichlet": 2,
    "linearity.batch_size": 8,
}


def load_config(path: str = DEFAULT_CONFIG, arg: str | None = None):
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def default_config(arg: str | None = "smoke", **overrides):
  """``configs/default.py:arg`` with ``section__field=value`` overrides."""
  c = load_config(DEFAULT_CONFIG, arg)
  for key, value in overrides.items():
    section, name = key.split("__")
    c[section][name] = value  # existing fields only: the config stays locked
  return c


def tiny_config(**overrides):
  """The tiny default config; ``overrides`` use '__' for '.' (train__epochs=2)."""
  c = load_config(DEFAULT_CONFIG, "smoke")
  values = dict(TINY_OVERRIDES)
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  for field, value in values.items():
    node = c
    *parents, leaf = field.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def tiny_flags(**overrides) -> list[str]:
  """``--config=...:smoke --config.x=y ...`` for experiments/run.py."""
  values = dict(TINY_OVERRIDES)
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  return [f"--config={DEFAULT_CONFIG}:smoke"] + [
      f"--config.{k}={v}" for k, v in values.items()]


def subprocess_env(*, one_device: bool = False, jax_cache: str | None = None,
                   **extra) -> dict:
  """Environment for run.py children: CPU, quiet, unbuffered.

  By default the children see the same (fake) CPU devices as the test
  process (conftest.py), so their results are comparable bit for bit with
  in-process runs; ``one_device`` gives them one device, like a laptop.
  ``jax_cache`` shares a persistent compilation cache. ``extra`` sets more
  variables (None removes one).
  """
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  if one_device:
    env["XLA_FLAGS"] = " ".join(
        f for f in env.get("XLA_FLAGS", "").split()
        if "xla_force_host_platform_device_count" not in f)
  if jax_cache:
    env["JAX_COMPILATION_CACHE_DIR"] = jax_cache
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env["PYTHONUNBUFFERED"] = "1"
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  for k, v in extra.items():
    if v is None:
      env.pop(k, None)
    else:
      env[k] = str(v)
  return env


def run_py(args: list[str], *, env: dict | None = None, timeout: float = 180,
           **popen_kwargs) -> subprocess.CompletedProcess:
  """Runs experiments/run.py to completion (raises on timeout)."""
  return subprocess.run([sys.executable, RUN_PY] + list(args),
                        env=env or subprocess_env(), capture_output=True,
                        text=True, timeout=timeout, cwd=ROOT, **popen_kwargs)


def start_run_py(args: list[str], *, env: dict | None = None,
                 log_path: str | None = None) -> subprocess.Popen:
  """Starts experiments/run.py in the background (output to ``log_path``)."""
  out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # pylint: disable=consider-using-with
  try:
    return subprocess.Popen([sys.executable, RUN_PY] + list(args),
                            env=env or subprocess_env(), stdout=out,
                            stderr=subprocess.STDOUT, cwd=ROOT)
  finally:
    if log_path:
      out.close()


def strip_timing(record: dict) -> dict:
  return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


def read_records(workdir: str) -> list[dict]:
  """metrics.jsonl, strictly (a torn line fails the test), timing removed."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [strip_timing(json.loads(line)) for line in f if line.strip()]


def restore_final(workdir: str, epoch: int | None = None):
  """(epoch, state as host numpy, metrics) of a workdir's newest checkpoint.

  Restored read-only from Orbax's own metadata (no model or data needed).
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mixlin_jax import checkpoints as ckpt_lib  # pylint: disable=import-outside-toplevel
  ckpts = ckpt_lib.Checkpoints(os.path.join(workdir, "checkpoints"),
                               read_only=True)
  try:
    epoch = ckpts.latest_epoch() if epoch is None else epoch
    state, metrics = ckpts.restore(epoch, None)
  finally:
    ckpts.close()
  return epoch, jax.tree.map(np.asarray, state), metrics


def assert_trees_bit_identical(a, b) -> None:
  """Same structure, dtypes, shapes and bytes in every leaf."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  la, ta = jax.tree.flatten_with_path(a)[0], jax.tree.structure(a)
  lb, tb = jax.tree.flatten_with_path(b)[0], jax.tree.structure(b)
  assert ta == tb, f"tree structures differ:\n{ta}\n{tb}"
  for (path, x), (_, y) in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    name = jax.tree_util.keystr(path)
    assert x.dtype == y.dtype and x.shape == y.shape, name
    assert x.tobytes() == y.tobytes(), (
        f"{name} differs: max |diff| = "
        f"{np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))}")


def reference_learning_rate(config, steps_per_epoch: int, step: int) -> float:
  """Linear warm-up from 0, then cosine decay to 0 at the end of training.

  optax's ``warmup_cosine_decay_schedule`` formulas written out: linear for
  ``step < warmup``, then ``peak * (1 + cos(pi * t)) / 2`` with ``t`` the
  fraction of the decay phase done (clipped at 1).
  """
  t = config.train
  total = t.epochs * steps_per_epoch
  warmup = min(round(t.warmup_epochs * steps_per_epoch), total - 1)
  if step < warmup:
    return t.learning_rate * step / warmup
  done = min((step - warmup) / (total - warmup), 1.0)
  return t.learning_rate * 0.5 * (1.0 + math.cos(math.pi * done))


class LoweringCounter:
  """Counts jaxpr -> XLA lowerings (each one precedes a compilation)."""

  EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"

  def __enter__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def _listen(self, name, *args, **kwargs):
    del args, kwargs
    if name == self.EVENT:
      self.count += 1

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._listen)
