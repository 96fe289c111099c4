"""Train state, the jitted train step, and the epoch loop.

(Evaluation -- the per-epoch classification and linearity measurements --
lives in ``mixlin_jax.evaluation``.)

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

import contextlib
import logging
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
from mixlin_jax import evaluation
from mixlin_jax import jax_cache
from mixlin_jax import losses
from mixlin_jax import mixup
from mixlin_jax import models
from mixlin_jax import parallel
from mixlin_jax import workdir as workdir_lib

log = logging.getLogger(__name__)

# Independent random streams folded into the root key of `config.seed`.
_INIT_STREAM, _DATA_STREAM, _STEP_STREAM = 0, 1, 2


class NonFiniteError(FloatingPointError):
  """Loss or gradients became NaN/Inf; the state was not saved.

  Raised by :meth:`Trainer.train_epoch` with the epoch and the step;
  :func:`train_and_evaluate`, which owns the checkpoints, raises it again
  with the checkpoint facts (:meth:`with_checkpoint`).

  Attributes:
    epoch: the epoch (1-based) that diverged.
    step: the global step index of the first non-finite step.
    total_steps: the run's number of steps (or None).
    checkpoint_directory: where checkpoints live (None: not known).
    last_checkpoint: the newest saved epoch there (None: none was saved).
  """

  def __init__(self, epoch: int, step: int, total_steps: int | None = None,
               *, checkpoint_directory: str | None = None,
               last_checkpoint: int | None = None):
    super().__init__(epoch, step)
    self.epoch, self.step, self.total_steps = epoch, step, total_steps
    self.checkpoint_directory = checkpoint_directory
    self.last_checkpoint = last_checkpoint

  def with_checkpoint(self, last_checkpoint: int | None,
                      directory: str) -> NonFiniteError:
    """The same error, saying which checkpoint a rerun would resume from."""
    return NonFiniteError(self.epoch, self.step, self.total_steps,
                          checkpoint_directory=directory,
                          last_checkpoint=last_checkpoint)

  def __str__(self) -> str:
    text = (f"Loss or gradients became non-finite in epoch {self.epoch} at "
            f"step {self.step}" + (f" (of {self.total_steps})"
                                   if self.total_steps else "") +
            ". The state was not saved")
    if self.checkpoint_directory is not None:
      if self.last_checkpoint is None:
        text += ("; no checkpoint was saved, so rerunning in the same "
                 "workdir with a changed config starts from scratch")
      else:
        text += (f"; last good checkpoint: epoch {self.last_checkpoint} in "
                 f"{self.checkpoint_directory}")
    return text + (". Lower train.learning_rate or mixup.consistency_weight,"
                   " or check the data.")


class TrainingInterrupted(KeyboardInterrupt):
  """Ctrl-C during training, after the checkpoint being written was finished.

  A ``KeyboardInterrupt`` (a notebook stops as usual); its message says
  where a rerun resumes. ``resume_epoch`` is the newest saved epoch (None:
  none was saved).
  """

  def __init__(self, resume_epoch: int | None):
    self.resume_epoch = resume_epoch
    super().__init__(
        "interrupted; rerun the same command to resume from epoch "
        f"{resume_epoch}" if resume_epoch is not None else
        "interrupted before any epoch was saved; rerun the same command to "
        "start again")


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


resolve_dtype = evaluation.resolve_dtype


def make_schedule(config: ml_collections.ConfigDict,
                  steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up from 0, then cosine decay to 0 at the last step.

  The one learning-rate schedule: the optimizer follows it and each epoch
  record reports it.
  """
  t = config.train
  total = t.epochs * steps_per_epoch
  warmup = int(round(t.warmup_epochs * steps_per_epoch))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate,
      warmup_steps=min(warmup, total - 1) if total > 1 else 0,
      decay_steps=max(total, 1), end_value=0.0)


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (Nesterov) with decoupled-from-BN weight decay and warm-up + cosine.

  Weight decay applies to kernels only (arrays of rank > 1), not to biases
  or BatchNorm scales, the usual choice for these models.
  """
  t = config.train
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  return optax.chain(
      optax.add_decayed_weights(t.weight_decay, mask=decay_mask),
      optax.sgd(make_schedule(config, steps_per_epoch),
                momentum=t.momentum or None,
                nesterov=t.nesterov and t.momentum > 0),
  )


def learning_rate_at(config, steps_per_epoch: int, step: int) -> float:
  """The learning rate the optimizer applies at (0-based) ``step``."""
  return float(make_schedule(config, steps_per_epoch)(step))


def steps_per_epoch(config: ml_collections.ConfigDict, num_train: int) -> int:
  """One pass over the training images at the labelled batch size (>= 1).

  The same for every regime, so every regime shares one x-axis.
  """
  return max(1, num_train // config.train.batch_size)


def initial_state(model, tx: optax.GradientTransformation, key: jax.Array,
                  image_shape: tuple[int, ...]) -> TrainState:
  """The state before the first step (the EMA teacher starts as the student)."""
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  variables = model.init(key, dummy, train=False)
  params, batch_stats = variables["params"], variables["batch_stats"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=batch_stats, opt_state=tx.init(params),
                    ema_params=params, ema_batch_stats=batch_stats)


def state_template(config: ml_collections.ConfigDict,
                   split: data_lib.SemiSupervisedSplit,
                   mesh: jax.sharding.Mesh | None = None) -> TrainState:
  """Shapes, dtypes and placement of this experiment's TrainState.

  Nothing is computed or allocated (``jax.eval_shape``). As the target of a
  checkpoint restore it decides where the arrays land: replicated on
  ``mesh`` (default: every device), whatever wrote them. Needs no Trainer
  and no data on the device.
  """
  mesh = mesh or parallel.make_mesh()
  model = models.get_model(config.model.name, split.num_classes,
                           dtype=resolve_dtype(config.model.compute_dtype))
  tx = make_optimizer(config, steps_per_epoch(
      config, len(split.x_labelled) + len(split.x_unlabelled)))
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _INIT_STREAM)
  shapes = jax.eval_shape(
      lambda: initial_state(model, tx, key, split.x_test.shape[1:]))
  sharding = parallel.replicated(mesh)
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      shapes)


def put_data_on_device(split: data_lib.SemiSupervisedSplit,
                       mesh: jax.sharding.Mesh) -> DeviceData:
  """The split as uint8 arrays replicated on ``mesh`` (labels int32)."""
  return parallel.put_replicated(
      DeviceData(x_labelled=split.x_labelled,
                 y_labelled=split.y_labelled.astype(np.int32),
                 x_unlabelled=split.x_unlabelled,
                 x_test=split.x_test,
                 y_test=split.y_test.astype(np.int32),
                 mean=split.mean.astype(np.float32),
                 std=split.std.astype(np.float32)), mesh)


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
    self.steps_per_epoch = steps_per_epoch(
        config, self.num_labelled + self.num_unlabelled)
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
    self.schedule = make_schedule(config, self.steps_per_epoch)
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
    self.data = put_data_on_device(split, self.mesh)

    self.init_state = jax.jit(self._init_state, out_shardings=rep)
    self.epoch_orders = jax.jit(self._epoch_orders, out_shardings=rep)
    self.train_step = jax.jit(self._train_step, donate_argnums=(0, 1))
    # ``evaluate(variables, images, labels)``: accuracy and loss as device
    # scalars (evaluation.ClassificationEvaluator binds the images).
    self.evaluate = jax.jit(
        lambda variables, images, labels: evaluation.classification_metrics(
            self.inference_fn(), variables, images, labels, self.data.mean,
            self.data.std, batch_size=config.eval.batch_size,
            mesh=self.mesh))
    self.zero_sums = jax.jit(self._zero_sums, out_shardings=rep)

  # -- state ----------------------------------------------------------------
  def _init_state(self) -> TrainState:
    return initial_state(self.model, self.tx, self.init_key, self.image_shape)

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

  # -- a whole epoch ----------------------------------------------------------
  def train_epoch(self, state: TrainState, epoch: int, *,
                  on_progress: Callable[[int, dict], None] | None = None
                  ) -> tuple[TrainState, dict]:
    """Runs the steps of epoch index ``epoch`` (0-based) from ``state``.

    Metrics are summed on the device and fetched once per
    ``train.log_every_steps`` (and at the end): each fetch checks them for
    NaN/Inf and calls ``on_progress(steps_done, mean_metrics_so_far)``.

    Returns:
      The new state and the epoch's mean training metrics.

    Raises:
      NonFiniteError: with the epoch (1-based) and the first bad step; the
        ``state`` passed in is gone (its buffers were donated).
    """
    spe = self.steps_per_epoch
    log_every = self.config.train.log_every_steps
    orders = self.epoch_orders(jnp.asarray(epoch, jnp.int32))
    sums = self.zero_sums()
    summary = None
    for i in range(spe):
      state, sums = self.train_step(state, sums, self.data, orders)
      if (i + 1) % log_every == 0 or i + 1 == spe:
        summary = _summarize_sums(sums)  # the only host sync of the interval
        if summary["nonfinite_steps"]:
          raise NonFiniteError(epoch + 1, summary["first_nonfinite_step"],
                               self.total_steps)
        if on_progress is not None:
          on_progress(i + 1, summary)
    return state, summary

  def apply_for_metrics(self) -> Callable:
    """``(variables, x) -> (logits, activations)``, inference mode, metric dtype."""
    model = self.metrics_model
    return lambda variables, x: model.apply(variables, x, train=False)

  def inference_fn(self) -> Callable:
    """``(variables, x) -> (logits, activations)``: inference, compute dtype."""
    model = self.model
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
  """The per-epoch linearity evaluator on a fixed subset (or None).

  See :func:`mixlin_jax.evaluation.make_linearity_evaluator`, which builds
  it without a Trainer.
  """
  return evaluation.make_linearity_evaluator(
      config, trainer.data, num_classes=trainer.num_classes,
      mesh=trainer.mesh)


def load_split(config) -> data_lib.SemiSupervisedSplit:
  """Reads the configured source and makes the semi-supervised split."""
  d = config.data
  arrays = data_lib.load_arrays(d.source, d.dataset, d.data_dir or None,
                                num_train=d.num_train, num_test=d.num_test)
  return data_lib.semi_supervised_split(arrays, d.num_labels, config.seed)


def format_epoch_summary(record: dict) -> str:
  """One line: loss, student and teacher test accuracy, img/s, linearity."""
  lin = ""
  if "linearity" in record:
    err = record["linearity"]["interp_error"]
    # A dead/collapsed layer has no value; never print it as linear.
    dead = set(record["linearity"].get("collapsed_layers", ()))
    lin = " interp_error[" + ", ".join(
        f"{name.split('_', 1)[-1]}=" + ("collapsed" if name in dead else
                                        f"{np.mean(err[name]['mean']):.3g}")
        for name in record["linearity"]["layers"]) + "]"
  return (f"epoch {record['epoch']}: loss {record['train']['loss']:.4f} "
          f"test acc {record['test']['student_accuracy']:.4f} "
          f"(teacher {record['test']['teacher_accuracy']:.4f}) "
          f"{record['images_per_second']:.0f} img/s{lin}")


def print_epoch_summary(record: dict) -> None:
  """Prints :func:`format_epoch_summary` on stdout (process 0 only).

  The default ``on_epoch_end`` of :func:`train_and_evaluate`: one plain
  line per epoch, whether or not a progress bar is shown, so a redirected
  log holds one clean line per epoch.
  """
  if parallel.is_main_process():
    print(format_epoch_summary(record), flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False,
                       progress: bool = True,
                       on_epoch_end: Callable[[dict], None] | None = (
                           print_epoch_summary)
                       ) -> list[dict]:
  """Runs (or resumes) one experiment; returns the per-epoch metric records.

  Order of work: validate the config and check the workdir, read and check
  the data, and only then compute or write. Resumes from the newest good
  checkpoint in ``workdir`` if there is one.

  Args:
    config: a config from ``configs/*.py`` (see ``mixlin_jax.config``).
    workdir: output folder (created if needed): new, empty, or one of an
      earlier run of this experiment.
    allow_config_change: resume into a workdir written by a different config.
    progress: show a progress bar over each epoch's steps (process 0 only).
    on_epoch_end: called with each epoch's record once it is logged and its
      checkpoint started (on every process); by default prints one line
      (:func:`print_epoch_summary`); None prints nothing.

  Raises:
    NonFiniteError: training diverged; says which checkpoint is the last good
      one (the diverged state is never saved).
    TrainingInterrupted: Ctrl-C; the checkpoint being written was finished
      first (unless interrupted again), and the message says where a rerun
      resumes.
  """
  jax_cache.enable()  # before the first compile: a rerun reuses the programs
  mesh = parallel.make_mesh()
  # Process 0 writes the workdir, so it alone probes it: several processes
  # creating and removing the same probe folders at once would race.
  config_lib.validate(config, device_count=mesh.size,
                      workdir=workdir if parallel.is_main_process() else None)
  workdir_lib.check(workdir, config, allow_config_change=allow_config_change)
  split = load_split(config)
  workdir_lib.prepare(workdir, config, allow_config_change=allow_config_change)

  trainer = Trainer(config, split, mesh)
  evaluators = evaluation.make_classification_evaluators(
      config, trainer.data, num_classes=trainer.num_classes, mesh=mesh)
  linearity_evaluator = make_linearity_evaluator(config, trainer)
  if linearity_evaluator is not None:
    evaluators["linearity"] = linearity_evaluator
  state = trainer.init_state()
  checkpoints = ckpt_lib.Checkpoints(
      os.path.join(workdir, "checkpoints"),
      max_to_keep=config.checkpoint.max_to_keep)
  metrics_log = workdir_lib.MetricsLog(workdir)
  start_epoch = 0
  try:
    restored = checkpoints.restore_latest_good(state)
    if restored is not None:
      start_epoch, state, _ = restored
      log.info("Resuming %s from epoch %d.", workdir, start_epoch)
    records = metrics_log.truncate(start_epoch)
    for epoch in range(start_epoch, config.train.epochs):
      start = time.perf_counter()
      with _progress_bar(progress, trainer.steps_per_epoch,
                         f"epoch {epoch + 1}/{config.train.epochs}") as bar:
        state, summary = trainer.train_epoch(state, epoch, on_progress=bar)
      train_seconds = time.perf_counter() - start
      record = _epoch_record(epoch, trainer, state, summary, train_seconds,
                             evaluators)
      metrics_log.append(record)
      checkpoints.save(epoch + 1, state, record)
      records.append(record)
      if on_epoch_end is not None:
        on_epoch_end(record)
  except NonFiniteError as e:
    checkpoints.wait()  # a save in flight is a good checkpoint
    raise e.with_checkpoint(checkpoints.latest_epoch(),
                            checkpoints.directory) from None
  except KeyboardInterrupt:
    # Finish the save in flight (the epoch before is complete and good). A
    # second Ctrl-C abandons it: Orbax commits by renaming a finished
    # temporary folder, and the next start deletes an unfinished one.
    checkpoints.wait(abandon_on_interrupt=True)
    raise TrainingInterrupted(checkpoints.latest_epoch()) from None
  finally:
    checkpoints.close()
  return records


def _epoch_record(epoch: int, trainer: Trainer, state: TrainState,
                  summary: dict, train_seconds: float,
                  evaluators: dict[str, Callable[[Any], dict]]) -> dict:
  """The record of epoch index ``epoch``: training means, evaluations, timing.

  ``evaluators``: "test" and "labelled" classification, and "linearity"
  when it is enabled.
  """
  t0 = time.perf_counter()
  student = evaluators["test"](state.student_variables())
  teacher = evaluators["test"](state.teacher_variables())
  labelled = evaluators["labelled"](state.student_variables())
  eval_seconds = time.perf_counter() - t0
  step = int(state.step)
  record = {
      "epoch": epoch + 1,
      "step": step,
      "learning_rate": float(trainer.schedule(step - 1)),
      "train": {k: v for k, v in summary.items() if k in _SUM_KEYS},
      "test": {"student_accuracy": student["accuracy"],
               "student_loss": student["loss"],
               "teacher_accuracy": teacher["accuracy"],
               "teacher_loss": teacher["loss"]},
      "labelled": {"student_accuracy": labelled["accuracy"],
                   "student_loss": labelled["loss"]},
      "seconds": {"train": train_seconds, "eval": eval_seconds},
      "images_per_second": (trainer.steps_per_epoch * trainer.images_per_step
                            / train_seconds),
  }
  if "linearity" in evaluators:
    t0 = time.perf_counter()
    record["linearity"] = evaluators["linearity"](state.student_variables())
    record["seconds"]["linearity"] = time.perf_counter() - t0
  return record


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, desc: str):
  """Yields the ``on_progress`` callback of :meth:`Trainer.train_epoch`.

  A tqdm bar on process 0 when ``enabled``; it is cleared when the epoch
  ends, also by an error or Ctrl-C, so whatever is printed next starts on
  a clean line.
  """
  if not enabled or not parallel.is_main_process():
    yield None
    return
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  bar = tqdm(total=total, desc=desc, unit="step", leave=False,
             dynamic_ncols=True)

  def on_progress(steps_done: int, summary: dict) -> None:
    bar.update(steps_done - bar.n)
    bar.set_postfix(loss=f"{summary['loss']:.3f}")

  try:
    yield on_progress
  finally:
    bar.close()
