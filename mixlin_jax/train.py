"""Train state, the jitted train step, evaluation, and the epoch loop.

Invariants this module keeps (they make resume exact and runs comparable):

* Every random number derives from the config seed with ``fold_in``: the
  initial parameters from stream 0, each epoch's data order from
  ``fold_in(data_key, epoch)``, each step's augmentation and mixing from
  ``fold_in(step_key, step)``. Nothing depends on wall time or on how many
  times the process restarted.
* An epoch is ``num_train // batch_size`` steps for every regime (one pass
  over the whole training set at the labelled batch size), so every regime
  shares one x-axis.
* The whole split lives on the accelerator as uint8; augmentation, mixing,
  the teacher forward and the EMA update run inside one jitted step that is
  compiled once and donates its state. Metrics are summed on device and
  fetched once per ``log_every_steps``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mixlin_jax import checkpoints as ckpt_lib
from mixlin_jax import config as config_lib
from mixlin_jax import data as data_lib
from mixlin_jax import losses
from mixlin_jax import mixup
from mixlin_jax import models
from mixlin_jax import parallel
from mixlin_jax import workdir as workdir_lib

log = logging.getLogger(__name__)

# Independent random streams folded into the root key of `config.seed`.
_INIT_STREAM, _DATA_STREAM, _STEP_STREAM = 0, 1, 2


class NonFiniteError(FloatingPointError):
  """Loss or gradients became NaN/Inf; the state was not saved."""


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (and nothing static).

  The EMA teacher averages both parameters and BatchNorm statistics; it is
  evaluated in inference mode.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  ema_batch_stats: Any

  def student_variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}

  def teacher_variables(self):
    return {"params": self.ema_params, "batch_stats": self.ema_batch_stats}


@flax.struct.dataclass
class DeviceData:
  """The semi-supervised split, resident on device as uint8."""
  x_labelled: jax.Array
  y_labelled: jax.Array
  x_unlabelled: jax.Array
  x_test: jax.Array
  y_test: jax.Array
  mean: jax.Array
  std: jax.Array


def resolve_dtype(name: str) -> jnp.dtype:
  """'auto' means bfloat16 on accelerators and float32 on CPU."""
  if name == "auto":
    name = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  return jnp.dtype(name)


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (Nesterov) with decoupled-from-BN weight decay and warm-up + cosine.

  Weight decay applies to kernels only (arrays of rank > 1), not to biases
  or BatchNorm scales, the usual choice for these models.
  """
  t = config.train
  total = t.epochs * steps_per_epoch
  warmup = int(round(t.warmup_epochs * steps_per_epoch))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate,
      warmup_steps=min(warmup, total - 1) if total > 1 else 0,
      decay_steps=max(total, 1), end_value=0.0)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  return optax.chain(
      optax.add_decayed_weights(t.weight_decay, mask=decay_mask),
      optax.sgd(schedule, momentum=t.momentum or None, nesterov=t.nesterov
                and t.momentum > 0),
  )


def learning_rate_at(config, steps_per_epoch: int, step: int) -> float:
  t = config.train
  total = t.epochs * steps_per_epoch
  warmup = int(round(t.warmup_epochs * steps_per_epoch))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, t.learning_rate, min(warmup, total - 1) if total > 1 else 0,
      max(total, 1), 0.0)
  return float(schedule(step))


_SUM_KEYS = ("loss", "supervised", "consistency", "consistency_weight",
             "train_accuracy")


class Trainer:
  """Holds the jitted functions of one experiment (built once, reused).

  Everything here is a pure function of its array arguments; the object only
  carries static facts (model, optimizer, shapes, mesh) closed over by jit.
  """

  def __init__(self, config: ml_collections.ConfigDict,
               split: data_lib.SemiSupervisedSplit,
               mesh: jax.sharding.Mesh | None = None):
    self.config = config
    self.mesh = mesh or parallel.make_mesh()
    self.num_classes = split.num_classes
    self.image_shape = tuple(split.x_test.shape[1:])
    self.num_labelled = len(split.x_labelled)
    self.num_unlabelled = len(split.x_unlabelled)
    self.steps_per_epoch = max(
        1, (self.num_labelled + self.num_unlabelled) // config.train.batch_size)
    self.total_steps = self.steps_per_epoch * config.train.epochs
    self.rampup_steps = int(round(config.mixup.rampup_epochs *
                                  self.steps_per_epoch))
    self.compute_dtype = resolve_dtype(config.model.compute_dtype)
    self.model = models.get_model(config.model.name, self.num_classes,
                                  dtype=self.compute_dtype)
    # Linearity is measured in its own precision (float32 by default): bf16
    # rounding alone puts a floor of ~1e-4 under the metrics.
    self.metrics_model = models.get_model(
        config.model.name, self.num_classes,
        dtype=resolve_dtype(config.linearity.compute_dtype))
    self.tx = make_optimizer(config, self.steps_per_epoch)
    self.mode = config.mixup.mode
    self.images_per_step = config.train.batch_size + (
        config.train.unlabelled_batch_size if self.mode == "unsupervised"
        else 0)

    root = jax.random.PRNGKey(config.seed)
    self.init_key = jax.random.fold_in(root, _INIT_STREAM)
    self.data_key = jax.random.fold_in(root, _DATA_STREAM)
    self.step_key = jax.random.fold_in(root, _STEP_STREAM)

    rep = parallel.replicated(self.mesh)
    self.data = parallel.put_replicated(
        DeviceData(x_labelled=split.x_labelled,
                   y_labelled=split.y_labelled.astype(np.int32),
                   x_unlabelled=split.x_unlabelled,
                   x_test=split.x_test,
                   y_test=split.y_test.astype(np.int32),
                   mean=split.mean.astype(np.float32),
                   std=split.std.astype(np.float32)), self.mesh)

    self.init_state = jax.jit(self._init_state, out_shardings=rep)
    self.epoch_orders = jax.jit(self._epoch_orders, out_shardings=rep)
    self.train_step = jax.jit(self._train_step, donate_argnums=(0, 1))
    self.evaluate = jax.jit(self._evaluate)
    self.zero_sums = jax.jit(self._zero_sums, out_shardings=rep)

  # -- state ----------------------------------------------------------------
  def _init_state(self) -> TrainState:
    dummy = jnp.zeros((1,) + self.image_shape, jnp.float32)
    variables = self.model.init(self.init_key, dummy, train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=batch_stats,
                      opt_state=self.tx.init(params), ema_params=params,
                      ema_batch_stats=batch_stats)

  def _zero_sums(self) -> dict:
    sums = {k: jnp.zeros((), jnp.float32) for k in _SUM_KEYS}
    sums["count"] = jnp.zeros((), jnp.int32)
    sums["nonfinite_steps"] = jnp.zeros((), jnp.int32)
    sums["first_nonfinite_step"] = jnp.full((), -1, jnp.int32)
    return sums

  # -- data -----------------------------------------------------------------
  def _epoch_orders(self, epoch: jax.Array) -> dict:
    """Index tables (steps_per_epoch, batch) of one epoch, from (seed, epoch)."""
    key = jax.random.fold_in(self.data_key, epoch)
    k_lab, k_unl = jax.random.split(key)
    spe, t = self.steps_per_epoch, self.config.train
    orders = {"labelled": data_lib.epoch_indices(
        k_lab, self.num_labelled, spe, t.batch_size)}
    if self.mode == "unsupervised":
      orders["unlabelled"] = data_lib.epoch_indices(
          k_unl, self.num_unlabelled, spe, t.unlabelled_batch_size)
    return orders

  def _augment(self, key, images_uint8, data: DeviceData):
    d = self.config.data
    if d.crop_padding or d.flip:
      images_uint8 = data_lib.random_crop_flip(key, images_uint8,
                                               d.crop_padding, flip=d.flip)
    return data_lib.normalize(images_uint8, data.mean, data.std)

  # -- the step -------------------------------------------------------------
  def _train_step(self, state: TrainState, sums: dict, data: DeviceData,
                  orders: dict) -> tuple[TrainState, dict]:
    cfg = self.config
    shard = lambda x: parallel.shard_batch(x, self.mesh)
    i = state.step % self.steps_per_epoch
    key = jax.random.fold_in(self.step_key, state.step)
    k_aug_l, k_aug_u, k_mix = jax.random.split(key, 3)

    idx_l = shard(orders["labelled"][i])
    x_l = shard(self._augment(k_aug_l, data.x_labelled[idx_l], data))
    y_l = data.y_labelled[idx_l]
    num_l = x_l.shape[0]
    k, alpha = cfg.mixup.num_points, cfg.mixup.alpha

    if self.mode == "supervised":
      tuples, weights = mixup.sample_mixing(k_mix, num_l, k, alpha)
      inputs = shard(mixup.mix(x_l, tuples, weights))
      targets = mixup.mix(jax.nn.one_hot(y_l, self.num_classes), tuples,
                          weights)
    else:
      inputs, targets = x_l, None

    cons_target = None
    if self.mode == "unsupervised":
      idx_u = shard(orders["unlabelled"][i])
      x_u = shard(self._augment(k_aug_u, data.x_unlabelled[idx_u], data))
      teacher_logits, _ = self.model.apply(state.teacher_variables(), x_u,
                                           train=False)
      teacher_probs = jax.nn.softmax(teacher_logits.astype(jnp.float32))
      tuples, weights = mixup.sample_mixing(k_mix, x_u.shape[0], k, alpha)
      x_mix = shard(mixup.mix(x_u, tuples, weights))
      cons_target = jax.lax.stop_gradient(
          mixup.mix(teacher_probs, tuples, weights))
      # One student forward over labelled and mixed unlabelled images: one
      # BatchNorm update per step and better device utilisation.
      inputs = jnp.concatenate([inputs, x_mix], axis=0)

    ramp = cfg.mixup.consistency_weight * losses.sigmoid_rampup(
        state.step, self.rampup_steps)

    def loss_fn(params):
      (logits, _), new_vars = self.model.apply(
          {"params": params, "batch_stats": state.batch_stats}, inputs,
          train=True, mutable=["batch_stats"])
      logits_l = logits[:num_l]
      if self.mode == "supervised":
        sup = losses.soft_cross_entropy(logits_l, targets)
        acc_labels = jnp.argmax(targets, -1)
      else:
        sup = losses.cross_entropy(logits_l, y_l)
        acc_labels = y_l
      if cons_target is not None:
        cons = losses.consistency_mse(logits[num_l:], cons_target)
      else:
        cons = jnp.zeros((), jnp.float32)
      total = sup + ramp * cons
      aux = dict(supervised=sup, consistency=cons,
                 train_accuracy=losses.accuracy(logits_l, acc_labels),
                 batch_stats=new_vars["batch_stats"])
      return total, aux

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = cfg.train.ema_decay
    ema = lambda e, p: decay * e + (1.0 - decay) * p
    new_state = TrainState(
        step=state.step + 1, params=params, batch_stats=aux["batch_stats"],
        opt_state=opt_state,
        ema_params=jax.tree.map(ema, state.ema_params, params),
        ema_batch_stats=jax.tree.map(ema, state.ema_batch_stats,
                                     aux["batch_stats"]))

    finite = jnp.isfinite(loss) & jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    values = dict(loss=loss, supervised=aux["supervised"],
                  consistency=aux["consistency"], consistency_weight=ramp,
                  train_accuracy=aux["train_accuracy"])
    new_sums = {k: sums[k] + values[k].astype(jnp.float32) for k in _SUM_KEYS}
    new_sums["count"] = sums["count"] + 1
    new_sums["nonfinite_steps"] = sums["nonfinite_steps"] + (~finite).astype(
        jnp.int32)
    new_sums["first_nonfinite_step"] = jnp.where(
        (~finite) & (sums["first_nonfinite_step"] < 0), state.step,
        sums["first_nonfinite_step"])
    return new_state, new_sums

  # -- evaluation -----------------------------------------------------------
  def _evaluate(self, variables, images, labels) -> dict:
    """Accuracy and loss over ``images`` (uint8, on device), in inference mode.

    Batches are scanned inside one jitted function; the last partial batch is
    padded and masked.
    """
    n = images.shape[0]
    bs = min(self.config.eval.batch_size, max(n, 1))
    bs = -(-bs // self.mesh.size) * self.mesh.size
    nb = -(-n // bs)
    idx = jnp.arange(nb * bs).reshape(nb, bs)
    valid = idx < n
    idx = jnp.minimum(idx, n - 1)
    mean, std = self.data.mean, self.data.std

    def body(carry, inp):
      batch_idx, mask = inp
      x = parallel.shard_batch(
          data_lib.normalize(images[batch_idx], mean, std), self.mesh)
      logits, _ = self.model.apply(variables, x, train=False)
      y = labels[batch_idx]
      correct = jnp.sum((jnp.argmax(logits, -1) == y) & mask)
      nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      return (carry[0] + correct, carry[1] + jnp.sum(jnp.where(mask, nll, 0))), None

    (correct, nll), _ = jax.lax.scan(
        body, (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)),
        (idx, valid))
    return {"accuracy": correct / n, "loss": nll / n}

  def apply_for_metrics(self) -> Callable:
    """``(variables, x) -> (logits, activations)``, inference mode, metric dtype."""
    model = self.metrics_model
    return lambda variables, x: model.apply(variables, x, train=False)

  def preprocess(self, images_uint8):
    return data_lib.normalize(images_uint8, self.data.mean, self.data.std)


def _summarize_sums(sums: dict) -> dict:
  host = jax.device_get(sums)
  count = max(int(host["count"]), 1)
  out = {k: float(host[k]) / count for k in _SUM_KEYS}
  out["nonfinite_steps"] = int(host["nonfinite_steps"])
  out["first_nonfinite_step"] = int(host["first_nonfinite_step"])
  return out


def make_linearity_evaluator(config, trainer: Trainer):
  """The per-epoch linearity evaluator on a fixed subset (or None)."""
  if not config.linearity.enabled:
    return None
  from mixlin_jax import linearity  # pylint: disable=import-outside-toplevel
  lin = config.linearity
  images = (trainer.data.x_test if lin.split == "test" else
            jnp.concatenate([trainer.data.x_labelled,
                             trainer.data.x_unlabelled]))
  return linearity.LinearityEvaluator(
      trainer.apply_for_metrics(), images, num_points=lin.num_points,
      num_tuples=lin.num_tuples, batch_size=lin.batch_size,
      key=jax.random.PRNGKey(lin.seed), grid=tuple(lin.grid),
      num_dirichlet=lin.num_dirichlet, preprocess=trainer.preprocess,
      mesh=trainer.mesh)


def load_split(config) -> data_lib.SemiSupervisedSplit:
  """Reads the configured source and makes the semi-supervised split."""
  d = config.data
  arrays = data_lib.load_arrays(d.source, d.dataset, d.data_dir or None,
                                num_train=d.num_train, num_test=d.num_test)
  return data_lib.semi_supervised_split(arrays, d.num_labels, config.seed)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False,
                       progress: bool = True,
                       on_epoch_end: Callable[[dict], None] | None = None
                       ) -> list[dict]:
  """Runs (or resumes) one experiment; returns the per-epoch metric records.

  Order of work: validate the config, read and check the data, check the
  workdir, and only then compute or write. Resumes from the newest good
  checkpoint in ``workdir`` if there is one.

  Args:
    config: a config from ``configs/*.py`` (see ``mixlin_jax.config``).
    workdir: output folder (created if needed).
    allow_config_change: resume into a workdir written by a different config.
    progress: show a progress bar (process 0 only).
    on_epoch_end: optional callback receiving each epoch's record.
  """
  mesh = parallel.make_mesh()
  config_lib.validate(config, device_count=mesh.size, workdir=workdir)
  split = load_split(config)
  workdir_lib.prepare(workdir, config, allow_config_change=allow_config_change)

  trainer = Trainer(config, split, mesh)
  evaluator = make_linearity_evaluator(config, trainer)
  state = trainer.init_state()
  checkpoints = ckpt_lib.Checkpoints(
      os.path.join(workdir, "checkpoints"),
      max_to_keep=config.checkpoint.max_to_keep)
  metrics_log = workdir_lib.MetricsLog(workdir)
  start_epoch = 0
  restored = checkpoints.restore_latest_good(state)
  if restored is not None:
    start_epoch, state, _ = restored
    log.info("Resuming %s from epoch %d.", workdir, start_epoch)
  records = metrics_log.truncate(start_epoch)

  try:
    for epoch in range(start_epoch, config.train.epochs):
      state, record = _run_epoch(config, trainer, evaluator, state, epoch,
                                 checkpoints, progress)
      metrics_log.append(record)
      checkpoints.save(epoch + 1, state, record)
      records.append(record)
      if on_epoch_end is not None:
        on_epoch_end(record)
  finally:
    checkpoints.close()
  return records


def _run_epoch(config, trainer: Trainer, evaluator, state, epoch: int,
               checkpoints: ckpt_lib.Checkpoints, progress: bool):
  spe = trainer.steps_per_epoch
  log_every = config.train.log_every_steps
  orders = trainer.epoch_orders(jnp.asarray(epoch, jnp.int32))
  sums = trainer.zero_sums()
  bar = _progress_bar(progress, spe, f"epoch {epoch + 1}/{config.train.epochs}")
  start = time.perf_counter()
  done = 0
  for i in range(spe):
    state, sums = trainer.train_step(state, sums, trainer.data, orders)
    if (i + 1) % log_every == 0 or i + 1 == spe:
      summary = _summarize_sums(sums)  # the only host sync of the interval
      if summary["nonfinite_steps"]:
        raise NonFiniteError(
            f"Loss or gradients became non-finite in epoch {epoch + 1} at "
            f"step {summary['first_nonfinite_step']} (of "
            f"{trainer.total_steps}). The state was not saved; last good "
            f"checkpoint: epoch {checkpoints.latest_epoch()} in "
            f"{checkpoints.directory}. Lower train.learning_rate or "
            "mixup.consistency_weight, or check the data.")
      if bar is not None:
        bar.update(i + 1 - done)
        bar.set_postfix(loss=f"{summary['loss']:.3f}")
      done = i + 1
  train_seconds = time.perf_counter() - start
  if bar is not None:
    bar.close()

  t0 = time.perf_counter()
  d = trainer.data
  student = jax.device_get(trainer.evaluate(state.student_variables(),
                                            d.x_test, d.y_test))
  teacher = jax.device_get(trainer.evaluate(state.teacher_variables(),
                                            d.x_test, d.y_test))
  # The same clean measurement for every regime (no augmentation, no mixing,
  # inference-mode BatchNorm): a regime's own training loss is not
  # comparable across regimes (mixed targets, consistency term).
  labelled = jax.device_get(trainer.evaluate(state.student_variables(),
                                             d.x_labelled, d.y_labelled))
  eval_seconds = time.perf_counter() - t0
  record = {
      "epoch": epoch + 1,
      "step": int(state.step),
      "learning_rate": learning_rate_at(config, spe, int(state.step) - 1),
      "train": {k: v for k, v in summary.items() if k in _SUM_KEYS},
      "test": {"student_accuracy": float(student["accuracy"]),
               "student_loss": float(student["loss"]),
               "teacher_accuracy": float(teacher["accuracy"]),
               "teacher_loss": float(teacher["loss"])},
      "labelled": {"student_accuracy": float(labelled["accuracy"]),
                   "student_loss": float(labelled["loss"])},
      "seconds": {"train": train_seconds, "eval": eval_seconds},
      "images_per_second": spe * trainer.images_per_step / train_seconds,
  }
  if evaluator is not None:
    t0 = time.perf_counter()
    record["linearity"] = evaluator(state.student_variables())
    record["seconds"]["linearity"] = time.perf_counter() - t0
  if progress and parallel.is_main_process():
    lin = ""
    if "linearity" in record:
      err = record["linearity"]["interp_error"]
      # A dead/collapsed layer has no value; never print it as linear.
      dead = set(record["linearity"].get("collapsed_layers", ()))
      lin = " interp_error[" + ", ".join(
          f"{name.split('_', 1)[-1]}=" + ("collapsed" if name in dead else
                                          f"{np.mean(err[name]['mean']):.3g}")
          for name in record["linearity"]["layers"]) + "]"
    print(f"epoch {epoch + 1}: loss {record['train']['loss']:.4f} "
          f"test acc {record['test']['student_accuracy']:.4f} "
          f"(teacher {record['test']['teacher_accuracy']:.4f}) "
          f"{record['images_per_second']:.0f} img/s{lin}", flush=True)
  return state, record


def _progress_bar(enabled: bool, total: int, desc: str):
  if not enabled or not parallel.is_main_process():
    return None
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, desc=desc, unit="step", leave=False,
              dynamic_ncols=True)
