"""Throughput of the *real* train step and of the linearity metrics.

What is timed is exactly what ``experiments/run.py`` runs: ``Trainer``'s
jitted, state-donating step (on-device gather, crop/flip, K-point mixing,
EMA teacher forward for the consistency loss, optimizer and EMA update), and
the ``LinearityEvaluator`` used every epoch and by post-hoc analysis. Inputs
are synthetic uint8 images of CIFAR shape (the speed does not depend on the
pixel values). Compilation is timed separately from the steady state, which
is measured over ``steps`` steps after ``warmup`` steps with one
``block_until_ready`` at each end.

Baselines, always measured in the same process:

* the floor of the linearity metrics: exactly the forward passes they need
  (K originals, W mixtures, the tangent path points, one JVP per tuple),
  batched the same way in one jitted call
  (``LinearityEvaluator.forward_floor``); the metric and the floor are timed
  alternately and each keeps its fastest run, so a loaded machine slows
  both alike, and ``ratio_vs_floor`` is the metrics' cost over the forwards
  they cannot avoid;
* the naive linearity loop (``linearity.naive_per_tuple_metrics``: a Python
  loop over weights and layers with host transfers), on a subset of tuples
  and reported per tuple;
* optionally the PyTorch reference script (``shared/bench``), run as a
  subprocess on the same device, and the ratio of images/s to it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mixlin_jax import config as config_lib
from mixlin_jax import data as data_lib
from mixlin_jax import linearity
from mixlin_jax import parallel
from mixlin_jax import train

REGIMES = ("erm", "supmix2", "mix2", "mix3")
BENCH_MODELS = ("preact_resnet18", "wrn28_2", "wrn16_1", "wrn10_1", "cnn")
# The reference script's interior grid (k+1)/9, k=0..7: 8 weights.
POST_HOC_GRID = tuple((k + 1) / 9 for k in range(8))


@dataclasses.dataclass
class BenchSettings:
  """What to measure; ``tiny()`` gives a seconds-long CPU variant."""
  models: Sequence[str] = ("preact_resnet18",)
  regimes: Sequence[str] = REGIMES
  batch_size: int = 512
  compute_dtype: str = "auto"
  steps: int = 100
  warmup: int = 10
  num_train: int = 50_000  # synthetic training images (CIFAR size)
  num_test: int = 10_000
  image_shape: tuple = (32, 32, 3)
  num_classes: int = 100
  epoch_tuples: int = 512  # per-epoch linearity subset (config default)
  post_hoc_tuples: int = 10_000
  linearity_batch: int = 1000
  naive_tuples: int = 64  # tuples timed with the naive loop
  linearity_dtypes: Sequence[str] = ("float32", "bfloat16")
  linearity_repeats: int = 3  # alternating timed runs of metric and floor

  @classmethod
  def tiny(cls) -> "BenchSettings":
    return cls(models=("cnn",), regimes=("erm", "mix2"), batch_size=16,
               steps=3, warmup=1, num_train=256, num_test=64,
               image_shape=(8, 8, 1), num_classes=10, epoch_tuples=16,
               post_hoc_tuples=32, linearity_batch=16, naive_tuples=4,
               linearity_dtypes=("float32",))


def synthetic_split(s: BenchSettings, seed: int = 0,
                    num_labels: int = 4000) -> data_lib.SemiSupervisedSplit:
  rng = np.random.default_rng(seed)
  num_labels = min(num_labels, s.num_train // 2)
  x = rng.integers(0, 256, (s.num_train,) + tuple(s.image_shape), np.uint8)
  xt = rng.integers(0, 256, (s.num_test,) + tuple(s.image_shape), np.uint8)
  channels = s.image_shape[-1]
  return data_lib.SemiSupervisedSplit(
      x_labelled=x[:num_labels],
      y_labelled=rng.integers(0, s.num_classes, num_labels).astype(np.int32),
      x_unlabelled=x[num_labels:], x_test=xt,
      y_test=rng.integers(0, s.num_classes, s.num_test).astype(np.int32),
      num_classes=s.num_classes,
      mean=np.full((channels,), 0.5, np.float32),
      std=np.full((channels,), 0.25, np.float32))


def bench_config(model: str, regime: str, s: BenchSettings):
  c = config_lib.dataset_config("cifar100", regime)
  c.model.name = model
  c.model.compute_dtype = s.compute_dtype
  c.train.batch_size = s.batch_size
  c.train.unlabelled_batch_size = s.batch_size
  c.train.epochs = 1
  c.train.warmup_epochs = 0.0
  c.linearity.grid = POST_HOC_GRID
  c.linearity.num_tuples = s.epoch_tuples
  c.linearity.batch_size = min(s.linearity_batch, s.epoch_tuples)
  return c


def peak_memory_bytes() -> int | None:
  """Peak device memory of device 0 (None where the backend keeps no stats)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _time(fn: Callable[[], Any], repeats: int) -> float:
  """Seconds per call of ``fn`` (which must block)."""
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def time_train_step(trainer: train.Trainer, steps: int, warmup: int) -> dict:
  """Compile time and steady-state speed of ``trainer.train_step``."""
  state = trainer.init_state()
  sums = trainer.zero_sums()
  orders = trainer.epoch_orders(jnp.asarray(0, jnp.int32))
  jax.block_until_ready((state, orders))
  start = time.perf_counter()
  state, sums = trainer.train_step(state, sums, trainer.data, orders)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - start
  for _ in range(max(warmup - 1, 0)):
    state, sums = trainer.train_step(state, sums, trainer.data, orders)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, sums = trainer.train_step(state, sums, trainer.data, orders)
  jax.block_until_ready((state, sums))
  seconds = time.perf_counter() - start
  loss = float(sums["loss"]) / max(int(sums["count"]), 1)
  return {
      "compile_s": compile_s,
      "step_ms": 1e3 * seconds / steps,
      "images_per_step": trainer.images_per_step,
      "images_per_s": steps * trainer.images_per_step / seconds,
      "mean_loss": loss,
      "compiles": trainer.train_step._cache_size(),  # pylint: disable=protected-access
  }, state


def _fastest_alternating(fns: Sequence[Callable[[], Any]],
                         repeats: int) -> tuple[list[float], list[float]]:
  """Fastest of ``repeats`` runs of each (blocking) function, run in turn so
  that a change of load hits all of them alike: (wall seconds, CPU seconds
  of this process, all threads).  On a machine shared with other work the
  CPU seconds are the steadier measure of what a computation costs."""
  wall, cpu = [math.inf] * len(fns), [math.inf] * len(fns)
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      start, start_cpu = time.perf_counter(), time.process_time()
      fn()
      wall[i] = min(wall[i], time.perf_counter() - start)
      cpu[i] = min(cpu[i], time.process_time() - start_cpu)
  return wall, cpu


def time_linearity(trainer: train.Trainer, variables, num_tuples: int,
                   batch_size: int, naive_tuples: int, dtype: str,
                   repeats: int = 3) -> dict:
  """Vectorized evaluator against its forward-pass floor and the naive loop
  on the same tuples."""
  from mixlin_jax import models  # pylint: disable=import-outside-toplevel
  model = models.get_model(trainer.config.model.name, trainer.num_classes,
                           dtype=train.resolve_dtype(dtype))
  apply_fn = lambda v, x: model.apply(v, x, train=False)
  evaluator = linearity.LinearityEvaluator(
      apply_fn, trainer.data.x_test, num_points=2, num_tuples=num_tuples,
      batch_size=min(batch_size, num_tuples), key=jax.random.PRNGKey(0),
      grid=POST_HOC_GRID, preprocess=trainer.preprocess)
  start = time.perf_counter()
  result = evaluator(variables)
  compile_s = time.perf_counter() - start
  evaluator.forward_floor(variables)  # compile the floor too
  (seconds, floor_s), (cpu_s, floor_cpu_s) = _fastest_alternating(
      [lambda: evaluator(variables), lambda: evaluator.forward_floor(variables)],
      repeats)

  tuples = evaluator.tuples[:naive_tuples]
  x = trainer.preprocess(jnp.asarray(np.asarray(trainer.data.x_test)[tuples]))
  linearity.naive_per_tuple_metrics(apply_fn, variables, x,
                                    evaluator.weights)  # warm the op caches
  naive_s = _time(lambda: linearity.naive_per_tuple_metrics(
      apply_fn, variables, x, evaluator.weights), 1)
  naive_per_tuple = naive_s / len(tuples)
  return {
      "dtype": dtype, "num_tuples": num_tuples,
      "num_weights": len(evaluator.weights), "num_layers": len(result["layers"]),
      "compile_s": compile_s, "seconds": seconds,
      "floor_seconds": floor_s, "ratio_vs_floor": seconds / floor_s,
      "cpu_seconds": cpu_s, "floor_cpu_seconds": floor_cpu_s,
      "cpu_ratio_vs_floor": cpu_s / floor_cpu_s,
      "naive_tuples_timed": len(tuples),
      "naive_seconds_extrapolated": naive_per_tuple * num_tuples,
      "speedup_vs_naive": naive_per_tuple * num_tuples / seconds,
  }


def run_torch_reference(script: str, batch_size: int, steps: int,
                        warmup: int, tiny: bool) -> dict:
  """Runs the PyTorch reference script and returns its JSON line."""
  cmd = [sys.executable, script, "--batch-size", str(batch_size), "--steps",
         str(steps), "--warmup", str(warmup)]
  if tiny:
    cmd += ["--tiny", "--compile", "none"]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def run(s: BenchSettings, *, torch_reference: str | None = None,
        log: Callable[[str], None] = print) -> dict:
  """Measures everything in ``s``; returns one JSON-able report."""
  mesh = parallel.make_mesh()
  split = synthetic_split(s)
  report: dict[str, Any] = {
      "device": jax.devices()[0].device_kind,
      "platform": jax.default_backend(),
      "num_devices": mesh.size,
      "versions": {"jax": jax.__version__},
      "settings": dataclasses.asdict(s),
      "train": [], "linearity": [],
  }
  for model in s.models:
    for regime in s.regimes:
      config = bench_config(model, regime, s)
      trainer = train.Trainer(config, split, mesh)
      row, state = time_train_step(trainer, s.steps, s.warmup)
      row.update(model=model, regime=regime, batch_size=s.batch_size,
                 compute_dtype=str(trainer.compute_dtype),
                 peak_memory_bytes=peak_memory_bytes())
      report["train"].append(row)
      log(f"train  {model:16s} {regime:8s} {row['images_per_s']:10.0f} img/s "
          f"({row['step_ms']:.2f} ms/step, compile {row['compile_s']:.1f} s)")
    # Linearity on the last trained state of this model.
    variables = state.student_variables()
    # Share of an epoch: against the *fastest* regime's epoch (conservative).
    spe = s.num_train // s.batch_size
    step_s = min(r["step_ms"] for r in report["train"]
                 if r["model"] == model) / 1e3
    for dtype in s.linearity_dtypes:
      for kind, tuples in (("per_epoch", s.epoch_tuples),
                           ("post_hoc", s.post_hoc_tuples)):
        row = time_linearity(trainer, variables, tuples, s.linearity_batch,
                             s.naive_tuples, dtype, s.linearity_repeats)
        row.update(model=model, kind=kind)
        if kind == "per_epoch":
          row["fraction_of_epoch"] = row["seconds"] / (spe * step_s)
        report["linearity"].append(row)
        log(f"linear {model:16s} {kind:9s} {dtype:8s} {row['seconds']*1e3:9.1f} ms "
            f"for {tuples} tuples x {row['num_weights']} weights x "
            f"{row['num_layers']} layers: {row['ratio_vs_floor']:.2f}x its "
            f"forward-pass floor ({row['floor_seconds']*1e3:.1f} ms; CPU time "
            f"{row['cpu_ratio_vs_floor']:.2f}x), "
            f"{row['speedup_vs_naive']:.1f}x faster than the naive loop")
  if torch_reference:
    ref = run_torch_reference(torch_reference, s.batch_size, s.steps,
                              s.warmup, tiny=s.image_shape != (32, 32, 3))
    report["torch_reference"] = ref
    for row in report["train"]:
      row["ratio_vs_torch"] = row["images_per_s"] / ref["train_img_per_s"]
    log(f"torch reference: {ref['train_img_per_s']:.0f} img/s ({ref['framework']})")
  return report


def _fmt(value, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def format_table(report: dict) -> str:
  """A Markdown table of the report (what the README shows)."""
  lines = [f"Device: {report['device']} x{report['num_devices']} "
           f"({report['platform']}), jax {report['versions']['jax']}", "",
           "| model | regime | batch | dtype | images/s | ms/step | compile s | peak MiB | vs torch |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in report["train"]:
    mem = r["peak_memory_bytes"]
    lines.append(
        f"| {r['model']} | {r['regime']} | {r['batch_size']} | {r['compute_dtype']} | "
        f"{r['images_per_s']:.0f} | {r['step_ms']:.2f} | {r['compile_s']:.1f} | "
        f"{'-' if mem is None else f'{mem / 2**20:.0f}'} | "
        f"{_fmt(r.get('ratio_vs_torch'), '.2f')} |")
  lines += ["", "| model | linearity | dtype | tuples x weights x layers | seconds | forward floor (s) | vs floor | vs floor (CPU time) | naive loop (s, extrapolated) | speedup | share of epoch |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in report["linearity"]:
    share = r.get("fraction_of_epoch")
    lines.append(
        f"| {r['model']} | {r['kind']} | {r['dtype']} | {r['num_tuples']} x {r['num_weights']} x {r['num_layers']} | "
        f"{r['seconds']:.3f} | {r['floor_seconds']:.3f} | {r['ratio_vs_floor']:.2f}x | "
        f"{r['cpu_ratio_vs_floor']:.2f}x | "
        f"{r['naive_seconds_extrapolated']:.2f} | "
        f"{r['speedup_vs_naive']:.1f}x | {'-' if share is None else f'{100 * share:.1f}%'} |")
  if "torch_reference" in report:
    ref = report["torch_reference"]
    lines += ["", f"PyTorch reference ({ref['framework']}, compile={ref['compile']}, "
              f"batch {ref['batch_size']}): {ref['train_img_per_s']:.0f} images/s."]
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# First call of ``linearity.measure`` against its compile floor

#: The small model of the first-call probe (issue 19): two conv blocks with
#: BatchNorm and dropout, a hidden dense layer and a head; 10 layers
#: measured (each block's conv, bn, dropout and output, the hidden layer,
#: the output), 16x16x3 inputs, 64 tuples.
FIRST_CALL_IMAGES = (256, 16, 16, 3)
FIRST_CALL_TUPLES = 64


def first_call_model():
  """``(model, variables, images)`` of the first-call probe."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  class Block(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train):
      x = nn.Conv(self.features, (3, 3), name="conv")(x)
      x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
      x = nn.Dropout(0.1, deterministic=not train, name="drop")(nn.relu(x))
      return nn.max_pool(x, (2, 2), (2, 2))

  class SmallNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = Block(16, name="block1")(x, train)
      x = Block(32, name="block2")(x, train)
      x = nn.relu(nn.Dense(64, name="hidden")(x.reshape(x.shape[0], -1)))
      return nn.Dense(10, name="head")(x)

  model = SmallNet()
  images = np.random.default_rng(0).normal(
      size=FIRST_CALL_IMAGES).astype(np.float32)
  variables = model.init(jax.random.key(1), images[:1])
  return model, variables, images


class _CompileEvents:
  """Sums of jax's compile-stage durations (``jax.monitoring``) and the
  number of XLA compilations, while active."""

  STAGES = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
            "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
            "/jax/core/compile/backend_compile_duration": "xla_compile_s"}

  def __init__(self):
    self.active = False
    self.totals = dict.fromkeys(self.STAGES.values(), 0.0)
    self.compiles = 0
    jax.monitoring.register_event_duration_secs_listener(self._on_duration)

  def _on_duration(self, event, duration, **_):
    if self.active and event in self.STAGES:
      self.totals[self.STAGES[event]] += duration
      if event == "/jax/core/compile/backend_compile_duration":
        self.compiles += 1

  def take(self) -> dict:
    out = dict(self.totals, compiles=self.compiles)
    self.totals = dict.fromkeys(self.STAGES.values(), 0.0)
    self.compiles = 0
    return out


def first_call_child(kind: str) -> dict:
  """One measurement in a fresh process (see :func:`time_first_call`).

  ``kind="floor"``: the seconds to trace, lower and compile (``jax.jit``,
  AOT) the model's forward with ``capture_intermediates=True`` on the
  batch ``measure`` forwards, plus its ``jax.jvp`` on the tuples' first
  points.  ``kind="measure"``: ``linearity.measure``'s first and second
  call, with the first call's compile stages and compilations counted.
  The model's own ``init`` runs before any timer starts, in both.
  """
  jax.config.update("jax_enable_compilation_cache", False)
  model, variables, images = first_call_model()
  jax.block_until_ready(variables)
  events = _CompileEvents()
  if kind == "floor":
    weights = len(linearity.DEFAULT_GRID)
    t, shape = FIRST_CALL_TUPLES, FIRST_CALL_IMAGES[1:]

    def forward(v, x):
      return model.apply(v, x, train=False, capture_intermediates=True,
                         mutable=["intermediates"])

    def jvp(v, x, dx):
      return jax.jvp(lambda z: forward(v, z), (x,), (dx,))

    big = jax.ShapeDtypeStruct((t * (1 + weights),) + shape, jnp.float32)
    small = jax.ShapeDtypeStruct((t,) + shape, jnp.float32)
    start = time.perf_counter()
    jax.jit(forward).lower(variables, big).compile()
    mid = time.perf_counter()
    jax.jit(jvp).lower(variables, small, small).compile()
    end = time.perf_counter()
    return {"floor_s": end - start, "forward_compile_s": mid - start,
            "jvp_compile_s": end - mid}
  call = lambda: linearity.measure(model, variables, images,
                                   num_tuples=FIRST_CALL_TUPLES,
                                   apply_kwargs={"train": False})
  events.active = True
  start = time.perf_counter()
  result = call()
  first = time.perf_counter() - start
  stages = events.take()
  start = time.perf_counter()
  call()
  second = time.perf_counter() - start
  stages_second = events.take()
  return dict(stages, first_call_s=first, second_call_s=second,
              second_call_compiles=stages_second["compiles"],
              num_layers=len(result.layers))


def _run_child(kind: str) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k != "JAX_COMPILATION_CACHE_DIR"}
  env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  code = ("import json; from mixlin_jax import benchmark; "
          f"print(json.dumps(benchmark.first_call_child({kind!r})))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True, env=env)
  return json.loads(out.stdout.strip().splitlines()[-1])


def time_first_call(repeats: int = 3) -> dict:
  """``linearity.measure``'s first call against its compile floor.

  Each measurement runs in a fresh process without JAX's persistent
  compilation cache, so nothing is compiled beforehand; floor and measure
  processes alternate, ``repeats`` times each, and each quantity keeps
  its median (a loaded machine slows both alike).  The floor is the
  compile of the model's forward with ``capture_intermediates`` plus its
  JVP (what any linearity measurement of the model must compile); the
  first call includes everything ``measure`` does (drawing the tuples,
  tracing, compiling, running, the host transfer).
  """
  floors, measures = [], []
  for _ in range(repeats):
    floors.append(_run_child("floor"))
    measures.append(_run_child("measure"))
  median = lambda rows, key: float(np.median([r[key] for r in rows]))
  row = {key: median(floors, key) for key in floors[0]}
  row.update({key: median(measures, key) for key in measures[0]})
  row["ratio"] = row["first_call_s"] / row["floor_s"]
  row["repeats"] = repeats
  row["num_tuples"] = FIRST_CALL_TUPLES
  row["image_shape"] = list(FIRST_CALL_IMAGES[1:])
  return row


def format_first_call(row: dict) -> str:
  """A Markdown table of :func:`time_first_call`'s row."""
  return "\n".join([
      "| layers | tuples | first call (s) | compile floor (s) | first call / floor | second call (s) | XLA compiles | XLA compile (s) | trace (s) |",
      "|---|---|---|---|---|---|---|---|---|",
      f"| {row['num_layers']:.0f} | {row['num_tuples']} | "
      f"{row['first_call_s']:.2f} | {row['floor_s']:.2f} | "
      f"{row['ratio']:.2f}x | {row['second_call_s']:.3f} | "
      f"{row['compiles']:.0f} | {row['xla_compile_s']:.2f} | "
      f"{row['trace_s']:.2f} |"])
