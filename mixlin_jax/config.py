"""Experiment configuration: the shared base, named variants, and validation.

Every ``configs/*.py`` file builds on :func:`base_config` and finishes with
:func:`finalize`, which applies the ``:arg`` variants of the command line
(``--config=configs/cifar10_mix3.py:smoke``) and locks the dict so that a
misspelt override (``--config.train.epoch=3``) fails instead of being
silently ignored.

:func:`validate` checks a config before any data is read, any array is
computed or any file is written, and raises one :class:`ConfigError` that
names the field, the value and what is allowed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from typing import Any, Iterable

import ml_collections

# Kept here rather than imported from data/models so validation stays cheap
# and importable without JAX; tests check they agree with those modules.
DATASET_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100,
                   "svhn_cropped": 10}
DATASET_TRAIN_SIZE = {"digits": 1437, "cifar10": 50_000, "cifar100": 50_000,
                      "svhn_cropped": 73_257}
MODEL_NAMES = ("cnn", "preact_resnet18", "wrn28_2", "wrn16_1", "wrn10_1")
MIXUP_MODES = ("none", "supervised", "unsupervised")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
NAMED_SOURCES = ("tfds", "embedded")
LINEARITY_SPLITS = ("test", "train")
# Mixup mixes K >= 2 points (one point would be no mixing at all): the one
# rule behind mixup.num_points, the supmixK/mixK variant names and the README.
MIN_MIX_POINTS = 2
VARIANTS = ("smoke, erm, supmixK, mixK "
            f"(K an integer >= {MIN_MIX_POINTS}, the points mixed)")

# Fields that do not change what a run computes; a workdir may be resumed
# with different values for these.
RESULT_NEUTRAL_FIELDS = frozenset({
    "data.data_dir",
    "checkpoint.max_to_keep",
    "train.log_every_steps",
    "eval.batch_size",
    "linearity.batch_size",
})


class ConfigError(ValueError):
  """A config field holds a value that is not allowed."""

  _NO_VALUE = object()

  def __init__(self, field: str, value: Any = _NO_VALUE, allowed: str = ""):
    if value is ConfigError._NO_VALUE:
      # Rebuilt from its message alone (ml_collections re-raises the errors
      # of a config file that way): keep the message as it is.
      self.field, self.value, self.allowed = None, None, None
      super().__init__(field)
      return
    self.field, self.value, self.allowed = field, value, allowed
    name = field if field.startswith("--") else f"config.{field}"
    super().__init__(f"{name} = {value!r} is not allowed: {allowed}")


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every experiment (CIFAR-scale, WRN-28-2, no mixup)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "cifar10"
  # 'tfds' (prepared TFDS data in data_dir), 'embedded' (scikit-learn's
  # digits, offline) or a path to an .npz array file.
  c.data.source = "tfds"
  c.data.data_dir = ""  # TFDS data_dir; '' = TFDS's default (~/tensorflow_datasets).
  c.data.num_labels = 4000
  c.data.num_train = 0  # keep only this many training images (0 = all).
  c.data.num_test = 0
  c.data.crop_padding = 4
  c.data.flip = True

  c.model = ml_collections.ConfigDict()
  c.model.name = "wrn28_2"
  # 'auto' = bfloat16 on GPU/TPU and float32 on CPU; parameters and
  # optimizer state are always float32.
  c.model.compute_dtype = "auto"

  # The consistency regimes follow ICT (Verma et al., 2019), whose
  # published settings are the reference: consistency weight 100 (on the
  # mean over examples and classes, as here), EMA decay 0.999, a sigmoid
  # ramp-up over the first quarter of training, alpha 1.0 for CIFAR-10 and
  # 0.1 for SVHN. These defaults are ICT's for the 100-epoch schedule;
  # configs that deviate (the short CPU schedules) say why in their
  # docstrings, with the pilot that chose their values.
  c.mixup = ml_collections.ConfigDict()
  c.mixup.mode = "none"
  c.mixup.num_points = 2
  c.mixup.alpha = 1.0
  c.mixup.consistency_weight = 100.0
  c.mixup.rampup_epochs = 25.0  # a quarter of train.epochs, as ICT

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 100
  c.train.batch_size = 64  # labelled images per step
  c.train.unlabelled_batch_size = 128  # unlabelled images per step (mode 'unsupervised')
  c.train.learning_rate = 0.05
  c.train.momentum = 0.9
  c.train.nesterov = True
  c.train.weight_decay = 5e-4
  c.train.warmup_epochs = 1.0
  c.train.ema_decay = 0.999  # ICT's
  c.train.log_every_steps = 50

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 500

  c.linearity = ml_collections.ConfigDict()
  c.linearity.enabled = True
  c.linearity.split = "test"
  c.linearity.num_tuples = 512
  c.linearity.num_points = 2
  c.linearity.grid = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
  c.linearity.num_dirichlet = 8
  c.linearity.batch_size = 128
  # Precision of the metric's forward passes ('auto' = as model.compute_dtype
  # would resolve). float32 by default: bf16 rounding alone scores ~1e-4.
  c.linearity.compute_dtype = "float32"
  # Separate from `seed` on purpose: runs with different training seeds or
  # regimes measure linearity on the very same tuples and weights.
  c.linearity.seed = 0

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.max_to_keep = 0  # 0 = keep every epoch (post-hoc analysis needs them)
  return c


_REGIME = re.compile(r"^(erm|supmix(\d+)|mix(\d+))$")


def check_regime_name(regime: str) -> re.Match:
  """Raises ConfigError unless ``regime`` is erm, supmixK or mixK."""
  m = _REGIME.match(regime)
  k = m and (m.group(2) or m.group(3))
  if not m or (k and int(k) < MIN_MIX_POINTS):
    raise ConfigError("--config variant", regime, f"one of {VARIANTS}")
  return m


def apply_regime(c: ml_collections.ConfigDict, regime: str) -> None:
  """Sets the mixup block from a regime name: erm, supmixK or mixK."""
  m = check_regime_name(regime)
  if regime == "erm":
    c.mixup.mode = "none"
  elif m.group(2):
    c.mixup.mode, c.mixup.num_points = "supervised", int(m.group(2))
  else:
    c.mixup.mode, c.mixup.num_points = "unsupervised", int(m.group(3))


def apply_smoke(c: ml_collections.ConfigDict) -> None:
  """Shrinks any config to a seconds-long run on CPU (wiring checks).

  The model becomes the small CNN: a ResNet step costs seconds on two CPU
  cores. Override ``--config.model.name`` after ``:smoke`` to keep it.
  """
  classes = DATASET_CLASSES.get(c.data.dataset, 10)
  c.model.name = "cnn"
  c.data.num_train = 0 if c.data.dataset == "digits" else 40 * classes
  c.data.num_test = 0 if c.data.dataset == "digits" else 10 * classes
  c.data.num_labels = 4 * classes
  c.train.epochs = 2
  c.train.batch_size = 16
  c.train.unlabelled_batch_size = 32
  c.train.log_every_steps = 5
  c.mixup.rampup_epochs = 1.0
  c.linearity.num_tuples = 32
  c.linearity.num_dirichlet = 4
  c.linearity.batch_size = 16
  c.eval.batch_size = 64


def finalize(c: ml_collections.ConfigDict,
             arg: str | None) -> ml_collections.ConfigDict:
  """Applies comma-separated ``:arg`` variants, then locks the config."""
  for token in filter(None, (arg or "").split(",")):
    token = token.strip()
    if token == "smoke":
      apply_smoke(c)
    else:
      apply_regime(c, token)
  c.lock()
  return c


def flatten(c: ml_collections.ConfigDict | dict, prefix: str = "") -> dict:
  """{'train.epochs': 3, ...} with tuples turned into lists (JSON-stable)."""
  out = {}
  items = c.items() if isinstance(c, dict) else c.to_dict().items()
  for k, v in items:
    key = f"{prefix}{k}"
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(flatten(v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def result_differences(old: dict, new: dict) -> list[str]:
  """Fields (flattened) whose values differ and that change the result."""
  fo, fn = flatten(old), flatten(new)
  keys = sorted(set(fo) | set(fn))
  return [f"{k}: {fo.get(k, '<absent>')!r} -> {fn.get(k, '<absent>')!r}"
          for k in keys
          if k not in RESULT_NEUTRAL_FIELDS and fo.get(k) != fn.get(k)]


def _require(ok: bool, field: str, value: Any, allowed: str) -> None:
  if not ok:
    raise ConfigError(field, value, allowed)


def _one_of(field: str, value: Any, allowed: Iterable[str]) -> None:
  allowed = tuple(allowed)
  _require(value in allowed, field, value,
           "one of " + ", ".join(repr(a) for a in allowed))


def _positive(c, field: str) -> None:
  value = _get(c, field)
  _require(isinstance(value, (int, float)) and value > 0, field, value,
           "a number > 0")


def _get(c, field: str) -> Any:
  for part in field.split("."):
    c = c[part]
  return c


def validate(c: ml_collections.ConfigDict, *, device_count: int = 1,
             workdir: str | None = None) -> None:
  """Checks every field that could make a run fail late or silently wrong.

  Runs before any data loading, compute or write. ``device_count`` is the
  global number of devices the batch is sharded over; ``workdir`` (if given)
  must be creatable and writable.

  Raises:
    ConfigError: naming the first offending field, its value and what is
      allowed.
  """
  _one_of("data.dataset", c.data.dataset, DATASET_CLASSES)
  source = c.data.source
  _require(source in NAMED_SOURCES or str(source).endswith(".npz"),
           "data.source", source,
           "'tfds', 'embedded' or a path to an .npz array file")
  if source == "embedded":
    _require(c.data.dataset == "digits", "data.dataset", c.data.dataset,
             "'digits' when data.source is 'embedded' (scikit-learn's digits)")
  if c.data.dataset == "digits":
    _require(source != "tfds", "data.source", source,
             "'embedded' or an .npz file for dataset 'digits' (not in TFDS)")
  _one_of("model.name", c.model.name, MODEL_NAMES)
  _one_of("model.compute_dtype", c.model.compute_dtype, COMPUTE_DTYPES)
  _one_of("mixup.mode", c.mixup.mode, MIXUP_MODES)
  _one_of("linearity.split", c.linearity.split, LINEARITY_SPLITS)
  _one_of("linearity.compute_dtype", c.linearity.compute_dtype, COMPUTE_DTYPES)

  classes = DATASET_CLASSES[c.data.dataset]
  for field in ("data.num_labels", "train.epochs", "train.batch_size",
                "train.log_every_steps", "eval.batch_size"):
    value = _get(c, field)
    _require(isinstance(value, int) and value >= 1, field, value,
             "an integer >= 1")
  for field in ("data.num_train", "data.num_test", "data.crop_padding",
                "checkpoint.max_to_keep"):
    value = _get(c, field)
    _require(isinstance(value, int) and value >= 0, field, value,
             "an integer >= 0")
  _require(c.data.num_labels % classes == 0, "data.num_labels",
           c.data.num_labels,
           f"a multiple of the {classes} classes of {c.data.dataset} "
           "(the labelled subset is class-balanced)")
  available = DATASET_TRAIN_SIZE[c.data.dataset]
  if c.data.num_train:
    available = min(available, c.data.num_train)
  if source in NAMED_SOURCES:  # an array file's size is checked on load
    _require(c.data.num_labels <= available, "data.num_labels",
             c.data.num_labels,
             f"at most {available}, the training images of "
             f"{c.data.dataset}" + (" kept by data.num_train"
                                    if c.data.num_train else ""))
  if c.data.num_train:
    _require(c.data.num_labels <= c.data.num_train, "data.num_labels",
             c.data.num_labels, f"at most data.num_train = {c.data.num_train}")

  for field in ("train.learning_rate", "mixup.alpha"):
    _positive(c, field)
  for field in ("train.weight_decay", "train.momentum",
                "train.warmup_epochs", "mixup.consistency_weight",
                "mixup.rampup_epochs"):
    value = _get(c, field)
    _require(isinstance(value, (int, float)) and value >= 0, field, value,
             "a number >= 0")
  _require(0 <= c.train.ema_decay < 1, "train.ema_decay", c.train.ema_decay,
           "a number in [0, 1)")
  _require(c.train.warmup_epochs <= c.train.epochs, "train.warmup_epochs",
           c.train.warmup_epochs, f"at most train.epochs = {c.train.epochs}")

  if c.mixup.mode == "unsupervised":
    # Checked before num_points, which must fit in this batch: a bad batch
    # size is named as such.
    ub = c.train.unlabelled_batch_size
    _require(isinstance(ub, int) and ub >= 1, "train.unlabelled_batch_size",
             ub, "an integer >= 1")
  k = c.mixup.num_points
  _require(isinstance(k, int) and k >= MIN_MIX_POINTS, "mixup.num_points", k,
           f"an integer >= {MIN_MIX_POINTS} (mixup mixes K >= "
           f"{MIN_MIX_POINTS} points)")
  mixed_batch = (c.train.unlabelled_batch_size
                 if c.mixup.mode == "unsupervised" else c.train.batch_size)
  field = ("train.unlabelled_batch_size" if c.mixup.mode == "unsupervised"
           else "train.batch_size")
  _require(k <= mixed_batch, "mixup.num_points", k,
           f"at most the batch it mixes ({field} = {mixed_batch})")
  if c.mixup.mode == "unsupervised":
    _require(c.data.num_labels < available, "data.num_labels",
             c.data.num_labels,
             "fewer than the training images: mode 'unsupervised' needs "
             "unlabelled data")

  for field in ("train.batch_size", "eval.batch_size") + (
      ("train.unlabelled_batch_size",)
      if c.mixup.mode == "unsupervised" else ()):
    value = _get(c, field)
    _require(value % device_count == 0, field, value,
             f"a multiple of the {device_count} devices the batch is "
             "sharded over")

  lin = c.linearity
  _require(isinstance(lin.num_points, int) and lin.num_points >= 2,
           "linearity.num_points", lin.num_points, "an integer >= 2")
  for field in ("num_tuples", "batch_size", "num_dirichlet"):
    value = lin[field]
    _require(isinstance(value, int) and value >= 1, f"linearity.{field}",
             value, "an integer >= 1")
  _require(lin.batch_size % device_count == 0, "linearity.batch_size",
           lin.batch_size,
           f"a multiple of the {device_count} devices")
  _require(len(lin.grid) >= 1 and all(0 < t < 1 for t in lin.grid),
           "linearity.grid", tuple(lin.grid),
           "a non-empty tuple of numbers strictly between 0 and 1")

  if workdir is not None:
    _check_writable(workdir)


def _check_writable(workdir: str) -> None:
  """Raises ConfigError unless ``workdir`` is (or can become) a writable folder.

  Permission bits are not enough (root passes them everywhere, and /proc or
  a read-only mount refuse anyway), so the check does what a run will do:
  it creates the missing folders and a file in the deepest one, then
  removes everything it created.
  """
  path = os.path.abspath(workdir)
  missing = []
  probe = path
  while not os.path.lexists(probe):
    missing.append(probe)
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  if not os.path.isdir(probe):
    raise ConfigError("--workdir", workdir,
                      f"a directory ({probe!r} is not a directory)")
  created = []
  try:
    for folder in reversed(missing):
      try:
        os.mkdir(folder)
      except FileExistsError:  # made meanwhile by someone else: not ours
        if not os.path.isdir(folder):
          raise
        continue
      created.append(folder)
    with tempfile.TemporaryFile(dir=path, prefix=".mixlin-probe-"):
      pass
  except OSError as e:
    raise ConfigError(
        "--workdir", workdir,
        f"a directory this process can create and write to ({e.strerror}: "
        f"{e.filename or path!r})") from None
  finally:
    for folder in reversed(created):
      try:
        os.rmdir(folder)
      except OSError:
        pass


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The config of ``path[:variants]``, loaded as ``--config=spec`` loads it.

  Each way a config file can fail gets one ConfigError naming the file and
  the problem (ml_collections' own loader answers some of them with a
  traceback or a misleading message): the file is missing or not a file,
  has a syntax error, raises while loading, defines no ``get_config``, or
  its ``get_config`` returns no config. An unknown variant raises the
  ConfigError of :func:`finalize`.
  """
  path, has_arg, arg = spec.partition(":")
  where = "--config"
  if not os.path.exists(path):
    raise ConfigError(f"{where}: {path} does not exist")
  if not os.path.isfile(path):
    raise ConfigError(f"{where}: {path} is not a file")
  try:
    with open(path, encoding="utf-8") as f:
      source = f.read()
    code = compile(source, path, "exec")
  except SyntaxError as e:
    raise ConfigError(f"{where}: {path} has a syntax error at line "
                      f"{e.lineno}: {e.msg}") from None
  except (OSError, ValueError) as e:
    raise ConfigError(f"{where}: {path} cannot be read: {e}") from None
  module_spec = importlib.util.spec_from_file_location("mixlin_config_file",
                                                       path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    exec(code, module.__dict__)  # pylint: disable=exec-used
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"{where}: {path} raised {type(e).__name__} while "
                      f"loading: {e}") from None
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"{where}: {path} defines no get_config() function "
                      "(a config file defines get_config(arg=None) and "
                      "returns the config; see configs/default.py)")
  try:
    config = get_config(arg) if has_arg else get_config()
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"{where}: {path}: get_config() raised "
                      f"{type(e).__name__}: {e}") from None
  if config is None:
    raise ConfigError(f"{where}: {path}: get_config() returned None (a "
                      "missing return statement?)")
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{where}: {path}: get_config() returned a "
                      f"{type(config).__name__}, not an "
                      "ml_collections.ConfigDict")
  return config


def dataset_config(dataset: str, regime: str) -> ml_collections.ConfigDict:
  """Base config specialised to a CIFAR/SVHN dataset and a regime name.

  Per-dataset choices: the usual semi-supervised label budgets (CIFAR-10
  4,000, CIFAR-100 10,000, SVHN 1,000); WRN-28-2 for CIFAR-10 and SVHN,
  PreAct ResNet-18 for CIFAR-100; no horizontal flips for SVHN (digits are
  not mirror-symmetric) and ICT's mixing alpha of 0.1 there (1.0, the
  base default, elsewhere).
  """
  c = base_config()
  c.data.dataset = dataset
  c.data.num_labels = {"cifar10": 4000, "cifar100": 10_000,
                       "svhn_cropped": 1000}[dataset]
  c.model.name = "preact_resnet18" if dataset == "cifar100" else "wrn28_2"
  if dataset == "svhn_cropped":
    c.data.flip = False
    c.mixup.alpha = 0.1  # ICT's for SVHN
  apply_regime(c, regime)
  return c
