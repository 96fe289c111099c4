"""Image data for the semi-supervised mixup study: loading, splitting, augmenting.

The module has two halves with different rules:

* **Host side** (numpy): :func:`load_arrays` turns a *source* ("tfds",
  "embedded", or an ``.npz`` array file) into whole-split uint8 arrays, and
  :func:`semi_supervised_split` carves those into a small class-balanced
  labelled set plus an unlabelled pool. The datasets studied here (CIFAR,
  SVHN, 8x8 digits) fit in host memory many times over, so holding them as
  plain arrays keeps everything downstream simple, deterministic and free of
  any input-pipeline framework (no TensorFlow is needed at any point).
* **Device side** (pure jax, jittable): :func:`normalize`,
  :func:`random_crop_flip` and :func:`epoch_indices` are meant to run
  *inside* the jitted train step. The uint8 arrays are put on device once;
  each step gathers its batch by index, augments and normalizes on device.
  Because the batch order of an epoch is a pure function of
  ``(data_key, epoch)`` a run resumed from a checkpoint sees exactly the
  batches it would have seen without the interruption.

Heavy optional imports (``tensorflow_datasets``, ``sklearn``) are done lazily
inside the functions that need them, so importing this module is cheap and a
run on an ``.npz`` file never imports TFDS.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import typing
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

_log = logging.getLogger(__name__)


class DatasetInfo(typing.NamedTuple):
  """Static facts about a dataset that the rest of the code must agree on."""

  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C)
  tfds_name: str | None  # None: not available through TFDS.


DATASETS: dict[str, DatasetInfo] = {
    # sklearn's embedded 8x8 handwritten digits: tiny, ships with
    # scikit-learn, needs no download -> used for smoke runs and tests.
    "digits": DatasetInfo(10, (8, 8, 1), None),
    "cifar10": DatasetInfo(10, (32, 32, 3), "cifar10"),
    "cifar100": DatasetInfo(100, (32, 32, 3), "cifar100"),
    "svhn_cropped": DatasetInfo(10, (32, 32, 3), "svhn_cropped"),
}

SOURCE_TFDS = "tfds"
SOURCE_EMBEDDED = "embedded"
NPZ_SUFFIX = ".npz"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

# Fixed train/test split of the embedded digits: 36 test images per class
# (360 in all, 1437 left for training), drawn with a fixed generator so that
# the test set never depends on an experiment's seed and results across seeds
# are measured on the same images.
DIGITS_TEST_PER_CLASS = 36
_DIGITS_SPLIT_SEED = 0

# Records decoded per `__getitems__` call when reading a TFDS data source:
# big enough to amortise per-call overhead (ArrayRecord reads a batch in
# parallel), small enough that an early stop for `num_train` wastes little.
_TFDS_CHUNK = 1024


class DataError(ValueError):
  """A data file or dataset is missing, unreadable or inconsistent.

  The message always names the file (or dataset + data_dir) and what is
  wrong with it, because these errors are met by people setting up a new
  machine, who need to know what to fix rather than where the code failed.
  """


@dataclasses.dataclass(frozen=True)
class ArraySplits:
  """A dataset's train and test splits as host numpy arrays.

  Images are kept as uint8 (N, H, W, C): 4x smaller than float32, so the
  whole set can live on the accelerator and be normalized per batch.
  """

  x_train: np.ndarray  # (N, H, W, C) uint8
  y_train: np.ndarray  # (N,) int32
  x_test: np.ndarray  # (M, H, W, C) uint8
  y_test: np.ndarray  # (M,) int32
  num_classes: int


@dataclasses.dataclass(frozen=True)
class SemiSupervisedSplit:
  """Training data as the semi-supervised learner may see it.

  The unlabelled pool deliberately carries *no* labels, so no code path can
  leak them into training by accident.
  """

  x_labelled: np.ndarray  # (L, H, W, C) uint8
  y_labelled: np.ndarray  # (L,) int32
  x_unlabelled: np.ndarray  # (U, H, W, C) uint8; U may be 0
  x_test: np.ndarray  # (M, H, W, C) uint8
  y_test: np.ndarray  # (M,) int32
  num_classes: int
  mean: np.ndarray  # (C,) float32, per-channel mean of x_train / 255
  std: np.ndarray  # (C,) float32, per-channel std of x_train / 255


# --------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------


def load_arrays(
    source: str,
    dataset: str,
    data_dir: str | None = None,
    num_train: int = 0,
    num_test: int = 0,
) -> ArraySplits:
  """Loads a dataset's train/test splits into host memory.

  Args:
    source: where the data comes from: ``"tfds"`` (prepared ArrayRecord data
      read through ``tfds.data_source``, no TensorFlow needed),
      ``"embedded"`` (sklearn's bundled 8x8 digits; ``dataset`` must be
      ``"digits"``), or a path ending in ``.npz`` holding ``x_train``,
      ``y_train``, ``x_test``, ``y_test`` (for machines without TFDS data or
      for custom preprocessing).
    dataset: a key of :data:`DATASETS`; fixes the number of classes and the
      image shape every source is validated against.
    data_dir: TFDS data directory (``source="tfds"`` only); None means TFDS's
      default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    num_train: if > 0, keep only a class-balanced subset of this many training
      examples (for smoke runs); 0 keeps all.
    num_test: same for the test split.

  Returns:
    The splits, images uint8 (N, H, W, C) and labels int32 (N,).

  Raises:
    ValueError: unknown dataset or source, or a source/dataset mismatch.
    DataError: the data is missing, unreadable or inconsistent.
  """
  info = _dataset_info(dataset)
  if num_train < 0 or num_test < 0:
    raise ValueError(
        f"num_train and num_test must be >= 0 (0 = all), got {num_train},"
        f" {num_test}"
    )
  if source == SOURCE_EMBEDDED:
    if dataset != "digits":
      raise ValueError(
          f"source='{SOURCE_EMBEDDED}' only provides dataset 'digits', not"
          f" '{dataset}'; use source='{SOURCE_TFDS}' or an .npz file"
      )
    arrays = _load_embedded_digits()
  elif source == SOURCE_TFDS:
    if info.tfds_name is None:
      raise ValueError(
          f"dataset '{dataset}' is not available through TFDS; use"
          f" source='{SOURCE_EMBEDDED}' or an .npz file"
      )
    arrays = _load_tfds(info, data_dir, num_train, num_test)
  elif isinstance(source, (str, os.PathLike)) and os.fspath(source).endswith(
      NPZ_SUFFIX
  ):
    arrays = _load_npz(os.fspath(source), info, dataset)
  else:
    raise ValueError(
        f"unknown data source {source!r}: expected '{SOURCE_TFDS}',"
        f" '{SOURCE_EMBEDDED}' or a path ending in '{NPZ_SUFFIX}'"
    )

  x_train, y_train = balanced_prefix(
      arrays.x_train, arrays.y_train, num_train, info.num_classes, "train"
  )
  x_test, y_test = balanced_prefix(
      arrays.x_test, arrays.y_test, num_test, info.num_classes, "test"
  )
  _log.info(
      "Loaded %s from %s: %d train, %d test images of shape %s.",
      dataset,
      source,
      len(x_train),
      len(x_test),
      x_train.shape[1:],
  )
  return ArraySplits(x_train, y_train, x_test, y_test, info.num_classes)


def _dataset_info(dataset: str) -> DatasetInfo:
  try:
    return DATASETS[dataset]
  except KeyError:
    raise ValueError(
        f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}"
    ) from None


def _load_embedded_digits() -> ArraySplits:
  """sklearn's 1797 8x8 digits with a fixed, seed-independent test split.

  Pixel values 0..16 are rescaled to 0..255 so that every source yields
  uint8 images with the same range and the same normalization code applies.
  """
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top

  digits = sk_datasets.load_digits()
  images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
  images = images[..., None]  # (N, 8, 8, 1)
  labels = digits.target.astype(np.int32)

  rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
  test_idx = np.concatenate([
      rng.choice(
          np.flatnonzero(labels == c), DIGITS_TEST_PER_CLASS, replace=False
      )
      for c in range(10)
  ])
  is_test = np.zeros(len(labels), bool)
  is_test[test_idx] = True
  # Both splits keep sklearn's original order (already class-mixed).
  return ArraySplits(
      x_train=images[~is_test],
      y_train=labels[~is_test],
      x_test=images[is_test],
      y_test=labels[is_test],
      num_classes=10,
  )


# The public download each array file is made from (experiments/make_array_file.py).
PUBLIC_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz",
                   "cifar100": "cifar-100-python.tar.gz",
                   "svhn_cropped": "DIR_WITH_THE_MAT_FILES"}


def _load_npz(path: str, info: DatasetInfo, dataset: str) -> ArraySplits:
  """Loads and validates an .npz array file (see :func:`load_arrays`)."""
  if not os.path.isfile(path):
    how = (f"; write it from the public archive with `python "
           f"experiments/make_array_file.py {dataset} "
           f"--from={PUBLIC_ARCHIVES[dataset]} --out={path}` (docs/experiments.md, Data)"
           if dataset in PUBLIC_ARCHIVES else "")
    raise DataError(f"data file {path!r} not found (no such file){how}")
  try:
    # allow_pickle=False: an array file must never execute code on load.
    npz = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(
        f"data file {path!r} is not a valid .npz array file ({e})"
    ) from e
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise DataError(
        f"data file {path!r} is not a valid .npz array file: it holds a single"
        f" array, expected an archive with keys {list(NPZ_KEYS)}"
    )
  with npz:
    missing = [k for k in NPZ_KEYS if k not in npz.files]
    if missing:
      raise DataError(
          f"data file {path!r} is missing keys {missing} (has"
          f" {sorted(npz.files)}; needs {list(NPZ_KEYS)})"
      )
    try:
      arrays = {k: npz[k] for k in NPZ_KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      raise DataError(
          f"data file {path!r} is not a valid .npz array file: cannot read"
          f" its arrays ({e})"
      ) from e
  splits = {}
  for split in ("train", "test"):
    splits[split] = _validate_split(
        arrays[f"x_{split}"],
        arrays[f"y_{split}"],
        info,
        what=f"data file {path!r}",
        split=split,
    )
  return ArraySplits(*splits["train"], *splits["test"], info.num_classes)


def _validate_split(
    x: np.ndarray, y: np.ndarray, info: DatasetInfo, what: str, split: str
) -> tuple[np.ndarray, np.ndarray]:
  """Checks one split against the dataset's contract; returns (x, y int32).

  Catching these problems on load (rather than as a shape error deep inside
  a jitted step, or as silently wrong results for out-of-range labels) is
  the whole point: the message says which file and which array is wrong.
  """
  xk, yk = f"x_{split}", f"y_{split}"
  if x.dtype != np.uint8:
    raise DataError(
        f"{what}: {xk} has dtype {x.dtype}, images must be uint8 (0..255)"
    )
  if not np.issubdtype(y.dtype, np.integer):
    raise DataError(
        f"{what}: {yk} has dtype {y.dtype}, labels must be an integer dtype"
    )
  if x.ndim != 4 or tuple(x.shape[1:]) != tuple(info.image_shape):
    raise DataError(
        f"{what}: {xk} has shape {x.shape}, expected (N, H, W, C) ="
        f" (N, {', '.join(map(str, info.image_shape))}) (NHWC)"
    )
  if y.ndim != 1:
    raise DataError(f"{what}: {yk} has shape {y.shape}, expected (N,)")
  if len(x) != len(y):
    raise DataError(
        f"{what}: length mismatch, {xk} has {len(x)} images but {yk} has"
        f" {len(y)} labels"
    )
  if len(x) == 0:
    raise DataError(f"{what}: the {split} split is empty (0 examples)")
  lo, hi = int(y.min()), int(y.max())
  if lo < 0 or hi >= info.num_classes:
    raise DataError(
        f"{what}: labels in {yk} out of range [0, {info.num_classes}): found"
        f" min {lo}, max {hi}"
    )
  return x, y.astype(np.int32)


def _tfds_prepare_instructions(tfds_name: str, data_dir: str | None) -> str:
  dir_arg = f", data_dir={data_dir!r}" if data_dir else ""
  src = "--config.data.source"
  return (
      "Prepare it once (building needs TensorFlow and network access;"
      " reading it afterwards needs neither):\n"
      "  (a) with network access, from the repository root:\n"
      '        pip install -e ".[prepare]"\n'
      '        python -c "import tensorflow_datasets as tfds;'
      f" tfds.builder('{tfds_name}'{dir_arg})"
      ".download_and_prepare(file_format='array_record')\"\n"
      "  (b) on Colab: run the same two commands in a cell (prefix each with"
      " '!') after cloning the repository; point data_dir at a mounted drive"
      " to keep the data between sessions;\n"
      "  (c) or write the data to an .npz array file with keys x_train,"
      " y_train, x_test, y_test (images uint8 NHWC, labels integer) and use"
      f" {src}=/path/file.npz"
  )


def _open_tfds_source(tfds_name: str, split: str, data_dir: str | None):
  """Opens a TFDS split for random access, never downloading anything.

  ``download=False`` on purpose: preparing a dataset needs TensorFlow and the
  network, which training machines may lack, so it is a separate explicit
  step (see the error message) instead of a side effect of training.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    return tfds.data_source(
        tfds_name, split=split, data_dir=data_dir, download=False
    )
  except (NotImplementedError, ValueError, OSError, KeyError,
          AssertionError) as e:
    where = (
        repr(data_dir)
        if data_dir
        else "(the default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    try:
      prepared = tfds.builder(tfds_name, data_dir=data_dir).is_prepared()
    except Exception:  # pylint: disable=broad-except
      prepared = False
    if prepared:
      problem = (
          "is prepared there but cannot be opened for random access (it must"
          " be prepared with file_format='array_record'; delete it and"
          " prepare again)"
      )
    else:
      problem = "is not prepared there"
    raise DataError(
        f"TFDS dataset '{tfds_name}' (split '{split}') in data_dir {where}"
        f" {problem}. TFDS said: {type(e).__name__}: {e}\n"
        + _tfds_prepare_instructions(tfds_name, data_dir)
    ) from e


def _load_tfds(
    info: DatasetInfo, data_dir: str | None, num_train: int, num_test: int
) -> ArraySplits:
  splits = {}
  for split, limit in (("train", num_train), ("test", num_test)):
    source = _open_tfds_source(info.tfds_name, split, data_dir)
    what = f"TFDS dataset '{info.tfds_name}' (data_dir={data_dir})"
    x, y = _read_records(source, info, limit, what, split)
    splits[split] = _validate_split(x, y, info, what=what, split=split)
  return ArraySplits(*splits["train"], *splits["test"], info.num_classes)


def _read_records(
    source, info: DatasetInfo, limit: int, what: str, split: str
) -> tuple[np.ndarray, np.ndarray]:
  """Decodes a random-access data source's 'image'/'label' into arrays.

  Reads in chunks through ``__getitems__`` when the source has it (the
  ArrayRecord source then reads each chunk in parallel), else one record at
  a time. With ``limit > 0`` it stops as soon as the prefix read so far is
  guaranteed to give the same class-balanced subset as the whole split (each
  class seen at least ceil(limit / num_classes) times), so smoke runs do not
  decode all of CIFAR.
  """
  n = len(source)
  x = np.empty((n, *info.image_shape), np.uint8)
  y = np.empty((n,), np.int64)
  counts = np.zeros(info.num_classes, np.int64)
  per_class = math.ceil(limit / info.num_classes) if limit > 0 else 0
  getitems = getattr(source, "__getitems__", None)
  end = 0
  for start in range(0, n, _TFDS_CHUNK):
    keys = list(range(start, min(n, start + _TFDS_CHUNK)))
    records = getitems(keys) if getitems is not None else [
        source[k] for k in keys
    ]
    for i, record in zip(keys, records):
      image = np.asarray(record["image"])
      if image.shape != tuple(info.image_shape):
        raise DataError(
            f"{what}: {split} record {i} has image shape {image.shape},"
            f" expected {tuple(info.image_shape)}"
        )
      x[i] = image
      y[i] = int(record["label"])
    end = keys[-1] + 1
    if per_class:
      labels = y[start:end]
      counts += np.bincount(
          labels[(labels >= 0) & (labels < info.num_classes)],
          minlength=info.num_classes,
      )
      if counts.min() >= per_class:
        break
  return x[:end], y[:end]


def balanced_prefix(
    x: np.ndarray, y: np.ndarray, n: int, num_classes: int, split: str
) -> tuple[np.ndarray, np.ndarray]:
  """Keeps ``n`` examples taken round-robin over classes (0 = keep all).

  Examples are ordered by (rank within their class, class), i.e. the first
  example of every class, then the second of every class, ...; the first
  ``n`` of that order are kept, returned in their original order. This is
  class-balanced, independent of any seed, and the same for a split and any
  prefix of it that already holds enough examples of every class.
  """
  if n <= 0 or n >= len(y):
    if n > len(y):
      _log.warning(
          "Requested %d %s examples but only %d exist; keeping all.",
          n,
          split,
          len(y),
      )
    return x, y
  rank = np.empty(len(y), np.int64)
  for c in range(num_classes):
    idx = np.flatnonzero(y == c)
    rank[idx] = np.arange(len(idx))
  order = np.lexsort((y, rank))  # Primary key: rank; ties broken by class.
  keep = np.sort(order[:n])
  return x[keep], y[keep]


# --------------------------------------------------------------------------
# Semi-supervised split.
# --------------------------------------------------------------------------


def semi_supervised_split(
    arrays: ArraySplits, num_labels: int, seed: int
) -> SemiSupervisedSplit:
  """Splits the training set into labelled and unlabelled parts.

  The labelled set is class-balanced (``num_labels // num_classes`` per
  class, chosen with ``np.random.default_rng(seed)``) as is standard in
  semi-supervised benchmarks, so that differences between runs come from the
  method and the seed, not from an accidentally skewed label set. Every
  other training example goes to the unlabelled pool, without its label.
  ``num_labels == len(x_train)`` means fully supervised: all examples are
  labelled (no balance or divisibility requirement) and the pool is empty.

  Normalization statistics come from the full training set (labelled and
  unlabelled): the images of the pool are available to the learner, only
  their labels are not.

  Raises:
    DataError: num_labels is not positive, exceeds the training set, is not
      divisible by the number of classes, or some class has too few examples.
  """
  x, y, num_classes = arrays.x_train, arrays.y_train, arrays.num_classes
  n = len(y)
  if num_labels <= 0 or num_labels > n:
    raise DataError(
        f"num_labels={num_labels} must be in [1, {n}] (the training set has"
        f" {n} examples)"
    )
  if num_labels == n:
    labelled = np.arange(n)
  else:
    if num_labels % num_classes:
      raise DataError(
          f"num_labels={num_labels} is not divisible by num_classes="
          f"{num_classes}; the labelled set must be class-balanced"
      )
    per_class = num_labels // num_classes
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
      idx = np.flatnonzero(y == c)
      if len(idx) < per_class:
        raise DataError(
            f"class {c} has only {len(idx)} training examples, but"
            f" num_labels={num_labels} needs {per_class} per class"
        )
      chosen.append(rng.choice(idx, per_class, replace=False))
    labelled = np.sort(np.concatenate(chosen))
  is_labelled = np.zeros(n, bool)
  is_labelled[labelled] = True
  mean, std = _channel_stats(x)
  return SemiSupervisedSplit(
      x_labelled=x[is_labelled],
      y_labelled=y[is_labelled].astype(np.int32),
      x_unlabelled=x[~is_labelled],
      x_test=arrays.x_test,
      y_test=arrays.y_test.astype(np.int32),
      num_classes=num_classes,
      mean=mean,
      std=std,
  )


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Exact per-channel mean/std of ``x / 255`` via 256-bin histograms.

  Histograms avoid materialising a float copy of the training set (1.2 GB
  in float64 for CIFAR). The std is floored at 1/255 (one intensity level)
  so a constant channel cannot cause a division by zero in :func:`normalize`.
  """
  channels = x.shape[-1]
  levels = np.arange(256, dtype=np.float64) / 255.0
  mean = np.empty(channels, np.float64)
  std = np.empty(channels, np.float64)
  for c in range(channels):
    counts = np.bincount(x[..., c].ravel(), minlength=256).astype(np.float64)
    total = counts.sum()
    mean[c] = counts @ levels / total
    std[c] = math.sqrt(max(counts @ (levels - mean[c]) ** 2 / total, 0.0))
  std = np.maximum(std, 1.0 / 255.0)
  return mean.astype(np.float32), std.astype(np.float32)


# --------------------------------------------------------------------------
# On-device pieces (pure jax; used inside the jitted train step).
# --------------------------------------------------------------------------


def normalize(images_uint8, mean, std, dtype=jnp.float32) -> jax.Array:
  """``(x / 255 - mean) / std`` per channel, computed in float32.

  The arithmetic is float32 whatever ``dtype`` is; only the result is cast,
  so a bfloat16 model input is not affected by bfloat16 rounding of the
  intermediate values.
  """
  x = jnp.asarray(images_uint8).astype(jnp.float32) / 255.0
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return ((x - mean) / std).astype(dtype)


def random_crop_flip(
    key: jax.Array, images_uint8, padding: int, flip: bool = True
) -> jax.Array:
  """Standard "pad, random crop, random horizontal flip" augmentation.

  Each image is zero-padded by ``padding`` pixels on every side (zero, i.e.
  black, padding as in the usual CIFAR recipe and torchvision's
  ``RandomCrop(padding=4)``),
  then an H x W window is cut at an independent uniformly random offset in
  ``[0, 2 * padding]^2``, and, if ``flip``, mirrored left-right with
  probability 1/2. ``padding=0`` skips the crop. Pass ``flip=False`` for
  data where mirroring changes the meaning (e.g. SVHN digits).

  Vectorized: one ``vmap``-ed ``dynamic_slice`` for the crops and a
  ``jnp.where`` for the flips, no Python loop over examples, so it compiles
  to a few fused ops inside the train step.

  Args:
    key: PRNG key; the same key gives the same augmentation.
    images_uint8: (N, H, W, C) uint8 images.
    padding: static non-negative int.
    flip: static bool, whether to apply random horizontal flips.

  Returns:
    (N, H, W, C) uint8 images.
  """
  if padding < 0:
    raise ValueError(f"padding must be >= 0, got {padding}")
  images = jnp.asarray(images_uint8)
  n, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(key)
  if padding:
    padded = jnp.pad(
        images,
        ((0, 0), (padding, padding), (padding, padding), (0, 0)),
        mode="constant",
    )
    offsets = jax.random.randint(
        crop_key, (n, 2), 0, 2 * padding + 1, dtype=jnp.int32
    )
    zero = jnp.zeros((), jnp.int32)
    images = jax.vmap(
        lambda img, off: jax.lax.dynamic_slice(
            img, (off[0], off[1], zero), (h, w, c)
        )
    )(padded, offsets)
  if flip:
    do_flip = jax.random.bernoulli(flip_key, 0.5, (n,))
    images = jnp.where(do_flip[:, None, None, None], images[:, :, ::-1, :],
                       images)
  return images


def epoch_indices(
    key: jax.Array, num_examples: int, num_steps: int, batch_size: int
) -> jax.Array:
  """Example indices for one epoch of ``num_steps`` batches.

  Concatenates independent permutations of ``range(num_examples)`` (pass
  ``p`` uses ``jax.random.fold_in(key, p)``) and takes the first
  ``num_steps * batch_size`` entries. Within each full pass every example
  appears exactly once, and a set smaller than an epoch (e.g. 40 labelled
  images vs. hundreds of steps) is simply cycled with a fresh order per
  pass. Called with ``key = fold_in(data_key, epoch)`` the order is a pure
  function of (seed, epoch), which is what makes resuming exact.

  ``num_examples``, ``num_steps`` and ``batch_size`` must be static
  (Python ints) under jit.

  Returns:
    int32 array of shape (num_steps, batch_size).
  """
  if num_examples <= 0 or num_steps <= 0 or batch_size <= 0:
    raise ValueError(
        "num_examples, num_steps and batch_size must be positive, got"
        f" {num_examples}, {num_steps}, {batch_size}"
    )
  total = num_steps * batch_size
  passes = -(-total // num_examples)
  keys = jax.vmap(lambda p: jax.random.fold_in(key, p))(
      jnp.arange(passes, dtype=jnp.uint32)
  )
  perms = jax.vmap(lambda k: jax.random.permutation(k, num_examples))(keys)
  return perms.reshape(-1)[:total].astype(jnp.int32).reshape(
      num_steps, batch_size
  )
