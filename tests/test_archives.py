"""experiments/make_array_file.py on tiny fakes of the public CIFAR and SVHN formats."""
import io
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from scipy import io as scipy_io

from mixlin_jax import archives, data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "make_array_file.py")


def _cifar_batch(rng, n, classes, label_key):
  x = rng.integers(0, 256, (n, 32, 32, 3), np.uint8)
  y = np.arange(n) % classes
  # The published layout: (N, 3072), channel-major, each channel row-major.
  flat = x.transpose(0, 3, 1, 2).reshape(n, 3072)
  return x, y, {b"data": flat, label_key.encode(): y.tolist(),
                b"batch_label": b"fake"}


def _add(tar, name, obj):
  payload = pickle.dumps(obj)
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def write_fake_cifar(path, dataset, rng, per_batch=20):
  folder, train, test, label_key, meta, names_key = archives._CIFAR[dataset]  # pylint: disable=protected-access
  classes = data.DATASETS[dataset].num_classes
  per_batch = max(per_batch, classes)
  xs = {"train": [], "test": []}
  ys = {"train": [], "test": []}
  with tarfile.open(path, "w:gz") as tar:
    for split, members in (("train", train), ("test", test)):
      for name in members:
        x, y, batch = _cifar_batch(rng, per_batch, classes, label_key)
        xs[split].append(x)
        ys[split].append(y)
        _add(tar, f"{folder}/{name}", batch)
    _add(tar, f"{folder}/{meta}",
         {names_key.encode(): [f"class{i}".encode() for i in range(classes)]})
  return {k: np.concatenate(v) for k, v in xs.items()}, {
      k: np.concatenate(v) for k, v in ys.items()}


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_archive_becomes_a_valid_array_file(tmp_path, dataset):
  rng = np.random.default_rng(0)
  archive = str(tmp_path / f"{dataset}.tar.gz")
  xs, ys = write_fake_cifar(archive, dataset, rng)
  out = str(tmp_path / "out.npz")
  info = archives.make_array_file(dataset, archive, out)
  assert info["num_train"] == len(ys["train"])
  with np.load(out) as f:
    np.testing.assert_array_equal(f["x_train"], xs["train"])  # pixels intact
    np.testing.assert_array_equal(f["y_train"], ys["train"])
    np.testing.assert_array_equal(f["x_test"], xs["test"])
    assert f["label_names"][1] == "class1"
  loaded = data.load_arrays(out, dataset)
  assert loaded.x_train.shape[1:] == (32, 32, 3)


def test_class_balanced_prefixes(tmp_path):
  archive = str(tmp_path / "c10.tar.gz")
  xs, ys = write_fake_cifar(archive, "cifar10", np.random.default_rng(1))
  out = str(tmp_path / "small.npz")
  info = archives.make_array_file("cifar10", archive, out, num_train=30,
                                  num_test=10)
  assert (info["num_train"], info["num_test"]) == (30, 10)
  with np.load(out) as f:
    assert np.bincount(f["y_train"], minlength=10).tolist() == [3] * 10
    assert np.bincount(f["y_test"], minlength=10).tolist() == [1] * 10
    # the same subset data.num_train would keep
    x_ref, _ = data.balanced_prefix(xs["train"], ys["train"], 30, 10, "train")
    np.testing.assert_array_equal(f["x_train"], x_ref)


def test_svhn_mat_files_map_label_10_to_0(tmp_path):
  rng = np.random.default_rng(2)
  expected = {}
  for split, name in zip(("train", "test"), archives.SVHN_FILES):
    n = 20
    x = rng.integers(0, 256, (n, 32, 32, 3), np.uint8)
    y = (np.arange(n) % 10) + 1  # 1..10, 10 = digit 0
    scipy_io.savemat(str(tmp_path / name),
                     {"X": x.transpose(1, 2, 3, 0), "y": y.reshape(-1, 1)})
    expected[split] = (x, np.where(y == 10, 0, y))
  out = str(tmp_path / "svhn.npz")
  archives.make_array_file("svhn_cropped", str(tmp_path), out)
  with np.load(out) as f:
    np.testing.assert_array_equal(f["x_train"], expected["train"][0])
    np.testing.assert_array_equal(f["y_test"], expected["test"][1])
    assert f["y_train"].min() == 0 and f["y_train"].max() == 9


def test_wrong_and_truncated_archives_are_clear_errors(tmp_path):
  archive = str(tmp_path / "c10.tar.gz")
  write_fake_cifar(archive, "cifar10", np.random.default_rng(3))
  with pytest.raises(data.DataError, match="no member"):  # wrong dataset
    archives.make_array_file("cifar100", archive, str(tmp_path / "o.npz"))
  truncated = str(tmp_path / "cut.tar.gz")
  with open(archive, "rb") as f, open(truncated, "wb") as g:
    g.write(f.read()[: os.path.getsize(archive) // 2])
  with pytest.raises(data.DataError, match="truncated|not a readable"):
    archives.make_array_file("cifar10", truncated, str(tmp_path / "o.npz"))
  junk = str(tmp_path / "junk.tar.gz")
  with open(junk, "wb") as f:
    f.write(b"not an archive at all")
  with pytest.raises(data.DataError, match="not a readable tar archive"):
    archives.make_array_file("cifar10", junk, str(tmp_path / "o.npz"))
  with pytest.raises(data.DataError, match="train_32x32.mat"):
    archives.make_array_file("svhn_cropped", str(tmp_path), str(tmp_path / "o.npz"))
  assert not os.path.exists(tmp_path / "o.npz")


def test_command_line(tmp_path):
  archive = str(tmp_path / "c10.tar.gz")
  write_fake_cifar(archive, "cifar10", np.random.default_rng(4))
  out = str(tmp_path / "c10.npz")
  ok = subprocess.run([sys.executable, SCRIPT, "cifar10", f"--from={archive}",
                       f"--out={out}", "--train=20"], capture_output=True,
                      text=True, timeout=120)
  assert ok.returncode == 0, ok.stderr
  assert f"--config.data.source={out}" in ok.stdout
  bad = subprocess.run([sys.executable, SCRIPT, "cifar10",
                        f"--from={tmp_path}/missing.tar.gz", f"--out={out}"],
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [
      f"error: {tmp_path}/missing.tar.gz does not exist"]
