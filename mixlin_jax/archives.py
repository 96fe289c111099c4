"""The public CIFAR and SVHN archives -> the project's validated array file.

Reads the files as their authors publish them, with nothing but numpy,
pickle, tarfile and scipy:

* CIFAR-10 ``cifar-10-python.tar.gz``: ``cifar-10-batches-py/data_batch_1..5``
  and ``test_batch``, pickled dicts with ``data`` (N, 3072) uint8 in
  channel-major order (1024 red, 1024 green, 1024 blue, each row-major) and
  ``labels``; ``batches.meta`` holds ``label_names``.
* CIFAR-100 ``cifar-100-python.tar.gz``: ``cifar-100-python/train`` and
  ``test`` with ``data`` and ``fine_labels`` (the 100 classes used here);
  ``meta`` holds ``fine_label_names``.
* SVHN ``train_32x32.mat`` and ``test_32x32.mat`` (the cropped-digits
  format, MATLAB v5, read with ``scipy.io.loadmat``): ``X`` (32, 32, 3, N)
  uint8 and ``y`` (N, 1) with labels 1..10, where 10 stands for the digit 0
  (mapped to 0 here, as TFDS's ``svhn_cropped`` does).

The result is written as the ``.npz`` array file ``data.source`` accepts
(``x_train, y_train, x_test, y_test``, plus ``label_names``) and read back
through :func:`mixlin_jax.data.load_arrays`, so a file this module writes is
one training accepts.  ``num_train``/``num_test`` keep the class-balanced
prefix :func:`mixlin_jax.data.balanced_prefix` defines, the same subset
``data.num_train`` would keep.
"""

from __future__ import annotations

import os
import pickle
import tarfile
import zlib

import numpy as np

from mixlin_jax import data as data_lib

FORMATS = ("cifar10", "cifar100", "svhn_cropped")
_CIFAR = {
    "cifar10": ("cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "labels", "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels",
                 "meta", "fine_label_names"),
}
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def _unpickle(tar: tarfile.TarFile, member: str, archive: str) -> dict:
  try:
    f = tar.extractfile(member)
    d = pickle.load(f, encoding="bytes")
  except KeyError:
    raise data_lib.DataError(
        f"{archive}: no member {member!r}; is this the python version of the "
        "archive (cifar-10-python.tar.gz / cifar-100-python.tar.gz)?"
    ) from None
  except (pickle.UnpicklingError, EOFError, ValueError, tarfile.TarError,
          zlib.error, OSError) as e:
    raise data_lib.DataError(
        f"{archive}: member {member!r} is truncated or not a pickle "
        f"({type(e).__name__}: {e})") from None
  return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_images(batch: dict, member: str, archive: str) -> np.ndarray:
  x = np.asarray(batch.get("data"))
  if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
    raise data_lib.DataError(
        f"{archive}: {member} 'data' has shape {x.shape} and dtype {x.dtype}, "
        "expected (N, 3072) uint8")
  return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def read_cifar(archive: str, dataset: str) -> tuple[dict, list[str]]:
  """``{"x_train", "y_train", "x_test", "y_test"}`` and the class names."""
  folder, train, test, label_key, meta, names_key = _CIFAR[dataset]
  try:
    tar = tarfile.open(archive, "r:*")
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise data_lib.DataError(
        f"{archive}: not a readable tar archive ({type(e).__name__}: {e})"
    ) from None
  with tar:
    arrays = {}
    for split, members in (("train", train), ("test", test)):
      xs, ys = [], []
      for name in members:
        member = f"{folder}/{name}"
        batch = _unpickle(tar, member, archive)
        if label_key not in batch:
          raise data_lib.DataError(
              f"{archive}: {member} has no {label_key!r} (keys: "
              f"{', '.join(sorted(batch))}); is it the {dataset} archive?")
        xs.append(_cifar_images(batch, member, archive))
        ys.append(np.asarray(batch[label_key], np.int64))
      arrays[f"x_{split}"] = np.concatenate(xs)
      arrays[f"y_{split}"] = np.concatenate(ys)
    names = [n.decode() if isinstance(n, bytes) else str(n)
             for n in _unpickle(tar, f"{folder}/{meta}", archive)[names_key]]
  return arrays, names


def read_svhn(folder: str) -> tuple[dict, list[str]]:
  """The cropped-digits ``.mat`` files in ``folder``; label 10 -> 0."""
  from scipy import io as scipy_io  # pylint: disable=import-outside-toplevel
  arrays = {}
  for split, name in zip(("train", "test"), SVHN_FILES):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
      raise data_lib.DataError(
          f"{path} does not exist: --from must be the folder holding "
          f"{' and '.join(SVHN_FILES)}")
    try:
      mat = scipy_io.loadmat(path)
    except (ValueError, OSError, TypeError, EOFError) as e:
      raise data_lib.DataError(
          f"{path}: not a readable MATLAB file, or truncated "
          f"({type(e).__name__}: {e})") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
      raise data_lib.DataError(
          f"{path}: expected 'X' (32, 32, 3, N) and 'y' (N, 1), found "
          f"{sorted(k for k in mat if not k.startswith('__'))}")
    arrays[f"x_{split}"] = np.ascontiguousarray(
        x.transpose(3, 0, 1, 2)).astype(np.uint8)
    labels = np.asarray(y, np.int64).reshape(-1)
    arrays[f"y_{split}"] = np.where(labels == 10, 0, labels)
  return arrays, [str(i) for i in range(10)]


def make_array_file(dataset: str, source: str, out: str, *,
                    num_train: int = 0, num_test: int = 0) -> dict:
  """Reads a public archive, writes the array file, checks it loads.

  Returns ``{"path", "num_train", "num_test", "num_classes"}``.

  Raises:
    mixlin_jax.data.DataError: a missing, wrong or truncated archive, named
      with what is wrong.
  """
  if dataset not in FORMATS:
    raise data_lib.DataError(
        f"dataset {dataset!r} is not one of {', '.join(FORMATS)}")
  if not os.path.exists(source):
    raise data_lib.DataError(f"{source} does not exist")
  if dataset == "svhn_cropped":
    arrays, names = read_svhn(source)
  else:
    arrays, names = read_cifar(source, dataset)
  classes = data_lib.DATASETS[dataset].num_classes
  for split, n in (("train", num_train), ("test", num_test)):
    arrays[f"x_{split}"], arrays[f"y_{split}"] = data_lib.balanced_prefix(
        arrays[f"x_{split}"], arrays[f"y_{split}"], n, classes, split)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp.npz"
  np.savez(tmp, label_names=np.asarray(names), **arrays)
  os.replace(tmp, out)
  loaded = data_lib.load_arrays(out, dataset)  # validates keys, shapes, labels
  return {"path": out, "num_train": len(loaded.y_train),
          "num_test": len(loaded.y_test), "num_classes": loaded.num_classes}
