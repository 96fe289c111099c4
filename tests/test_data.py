"""Tests for mixlin_jax.data: loading, validation, splitting, augmentation.

Everything here is CPU-only and offline: the TFDS path is exercised through
``tfds.testing.mock_data`` (which needs no TensorFlow for data sources) and
the "data not prepared" path runs with the network blocked.
"""

import dataclasses
import os
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixlin_jax import data


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------


def _id_images(n, shape=(8, 8, 1), offset=0):
  """uint8 images whose first two pixels encode a unique id (offset + i)."""
  ids = np.arange(offset, offset + n)
  x = np.zeros((n, *shape), np.uint8)
  flat = x.reshape(n, -1)
  flat[:, 0] = ids % 256
  flat[:, 1] = ids // 256
  # Fill the rest with id-dependent noise so crops are distinguishable.
  rng = np.random.default_rng(offset)
  flat[:, 2:] = rng.integers(0, 256, flat[:, 2:].shape, dtype=np.uint8)
  return x


def _ids(x):
  flat = x.reshape(len(x), -1).astype(np.int64)
  return flat[:, 0] + 256 * flat[:, 1]


def _labels(n, num_classes, seed=0):
  """Labels with every class present, in a shuffled order."""
  y = np.arange(n) % num_classes
  return np.random.default_rng(seed).permutation(y)


def _arrays(n_train=200, n_test=50, num_classes=10, shape=(8, 8, 1)):
  return data.ArraySplits(
      x_train=_id_images(n_train, shape),
      y_train=_labels(n_train, num_classes).astype(np.int32),
      x_test=_id_images(n_test, shape, offset=n_train),
      y_test=_labels(n_test, num_classes, seed=1).astype(np.int32),
      num_classes=num_classes,
  )


def _write_npz(path, **overrides):
  a = _arrays()
  arrays = dict(
      x_train=a.x_train,
      y_train=a.y_train.astype(np.int64),
      x_test=a.x_test,
      y_test=a.y_test.astype(np.int64),
  )
  arrays.update(overrides)
  arrays = {k: v for k, v in arrays.items() if v is not None}
  np.savez(path, **arrays)
  return arrays


@pytest.fixture
def no_network(monkeypatch):
  """Makes any attempt to open a network connection fail loudly."""

  def refuse(*args, **kwargs):
    raise AssertionError(f"test tried to use the network: {args}")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ---------------------------------------------------------------------------
# Embedded digits.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
  return data.load_arrays("embedded", "digits")


def test_embedded_digits_shapes_dtypes_range(digits):
  assert digits.num_classes == 10
  assert digits.x_train.shape == (1797 - 360, 8, 8, 1)
  assert digits.x_test.shape == (360, 8, 8, 1)
  assert digits.x_train.dtype == np.uint8 and digits.x_test.dtype == np.uint8
  assert digits.y_train.dtype == np.int32 and digits.y_test.dtype == np.int32
  assert digits.x_train.min() == 0 and digits.x_train.max() == 255
  # Values are the 17 original levels 0..16 rescaled to 0..255.
  levels = set(np.rint(np.arange(17) * 255 / 16).astype(int).tolist())
  assert set(np.unique(digits.x_train).tolist()) <= levels
  np.testing.assert_array_equal(np.bincount(digits.y_test), [36] * 10)
  assert set(np.unique(digits.y_train).tolist()) == set(range(10))


def test_embedded_digits_deterministic(digits):
  again = data.load_arrays("embedded", "digits")
  for field in ("x_train", "y_train", "x_test", "y_test"):
    np.testing.assert_array_equal(getattr(digits, field), getattr(again, field))


def test_embedded_digits_subset_is_balanced(digits):
  small = data.load_arrays("embedded", "digits", num_train=30, num_test=25)
  np.testing.assert_array_equal(np.bincount(small.y_train), [3] * 10)
  assert sorted(np.bincount(small.y_test).tolist()) == [2] * 5 + [3] * 5
  # A subset of the full split (same images), independent of any seed.
  full_ids = {im.tobytes() for im in digits.x_train}
  assert all(im.tobytes() in full_ids for im in small.x_train)


def test_bad_source_and_dataset_names():
  with pytest.raises(ValueError, match="only provides dataset 'digits'"):
    data.load_arrays("embedded", "cifar10")
  with pytest.raises(ValueError, match="unknown data source"):
    data.load_arrays("/some/file.npy", "digits")
  with pytest.raises(ValueError, match="unknown dataset"):
    data.load_arrays("embedded", "mnist")
  with pytest.raises(ValueError, match="not available through TFDS"):
    data.load_arrays("tfds", "digits")


# ---------------------------------------------------------------------------
# .npz array files.
# ---------------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
  path = str(tmp_path / "digits.npz")
  written = _write_npz(path)
  a = data.load_arrays(path, "digits")
  assert a.num_classes == 10
  for key in data.NPZ_KEYS:
    np.testing.assert_array_equal(getattr(a, key), written[key])
  assert a.y_train.dtype == np.int32 and a.y_test.dtype == np.int32
  assert a.x_train.dtype == np.uint8


def test_npz_num_train_subset(tmp_path):
  path = str(tmp_path / "d.npz")
  _write_npz(path)
  a = data.load_arrays(path, "digits", num_train=20, num_test=10)
  np.testing.assert_array_equal(np.bincount(a.y_train), [2] * 10)
  np.testing.assert_array_equal(np.bincount(a.y_test), [1] * 10)


_A = _arrays()

# name -> (overrides for _write_npz, substrings the message must contain).
_BAD_NPZ = {
    "missing_keys": (
        dict(y_test=None, x_test=None),
        ["missing keys", "'x_test'", "'y_test'"],
    ),
    "image_dtype": (
        dict(x_train=_A.x_train.astype(np.float32)),
        ["x_train", "float32", "uint8"],
    ),
    "label_dtype": (
        dict(y_test=_A.y_test.astype(np.float64)),
        ["y_test", "float64", "integer"],
    ),
    "image_channels": (
        dict(x_train=np.zeros((200, 8, 8, 3), np.uint8)),
        ["x_train", "shape (200, 8, 8, 3)", "NHWC"],
    ),
    "image_rank": (
        dict(x_test=_A.x_test[..., 0]),
        ["x_test", "shape (50, 8, 8)", "NHWC"],
    ),
    "label_rank": (
        dict(y_train=_A.y_train[:, None]),
        ["y_train", "shape (200, 1)"],
    ),
    "length_mismatch": (
        dict(y_train=_A.y_train[:-1]),
        ["length mismatch", "200 images", "199 labels"],
    ),
    "labels_out_of_range": (
        dict(y_test=np.where(np.arange(50) == 3, 10, _A.y_test)),
        ["y_test", "out of range", "[0, 10)", "max 10"],
    ),
    "negative_labels": (
        dict(y_train=np.where(np.arange(200) == 3, -1, _A.y_train)),
        ["y_train", "out of range", "min -1"],
    ),
    "empty_split": (
        dict(
            x_test=np.zeros((0, 8, 8, 1), np.uint8),
            y_test=np.zeros((0,), np.int64),
        ),
        ["test split is empty"],
    ),
}


@pytest.mark.parametrize("case", sorted(_BAD_NPZ))
def test_npz_bad_file_raises_data_error(tmp_path, case):
  overrides, expected = _BAD_NPZ[case]
  path = str(tmp_path / f"{case}.npz")
  _write_npz(path, **overrides)
  with pytest.raises(data.DataError) as err:
    data.load_arrays(path, "digits")
  msg = str(err.value)
  assert path in msg
  for part in expected:
    assert part in msg, (part, msg)


def test_npz_missing_file(tmp_path):
  path = str(tmp_path / "nope.npz")
  with pytest.raises(data.DataError, match="not found") as err:
    data.load_arrays(path, "digits")
  assert path in str(err.value)
  assert "make_array_file" not in str(err.value)  # digits ship embedded


def test_npz_missing_file_says_how_to_make_it(tmp_path):
  from mixlin_jax import archives  # pylint: disable=import-outside-toplevel
  assert set(data.PUBLIC_ARCHIVES) == set(archives.FORMATS)
  path = str(tmp_path / "cifar100.npz")
  with pytest.raises(data.DataError) as err:
    data.load_arrays(path, "cifar100")
  assert (f"python experiments/make_array_file.py cifar100 "
          f"--from=cifar-100-python.tar.gz --out={path}") in str(err.value)


def test_npz_not_a_valid_file(tmp_path):
  path = str(tmp_path / "garbage.npz")
  with open(path, "wb") as f:
    f.write(b"this is not a zip archive at all")
  with pytest.raises(data.DataError, match="not a valid .npz") as err:
    data.load_arrays(path, "digits")
  assert path in str(err.value)
  # A single .npy array saved under an .npz name is also rejected.
  path2 = str(tmp_path / "single.npz")
  with open(path2, "wb") as f:
    np.save(f, np.zeros(3))
  with pytest.raises(data.DataError, match="single array") as err:
    data.load_arrays(path2, "digits")
  assert path2 in str(err.value)


def test_npz_object_arrays_are_rejected_without_unpickling(tmp_path):
  path = str(tmp_path / "pickled.npz")
  obj = np.empty(200, object)
  obj[:] = [None] * 200
  _write_npz(path, y_train=obj)
  with pytest.raises(data.DataError) as err:
    data.load_arrays(path, "digits")
  assert path in str(err.value)


# ---------------------------------------------------------------------------
# Semi-supervised split.
# ---------------------------------------------------------------------------


def test_split_balanced_disjoint_complete():
  a = _arrays()
  s = data.semi_supervised_split(a, num_labels=40, seed=3)
  assert s.x_labelled.shape == (40, 8, 8, 1)
  assert s.y_labelled.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(s.y_labelled), [4] * 10)
  lab, unl = _ids(s.x_labelled), _ids(s.x_unlabelled)
  assert len(set(lab)) == 40 and len(set(unl)) == 160
  assert not set(lab) & set(unl)
  assert set(lab) | set(unl) == set(range(200))
  # Labels travel with their images.
  np.testing.assert_array_equal(s.y_labelled, a.y_train[lab])
  # The split holds no labels for the unlabelled pool at all.
  assert not any("unlabelled" in f.name and f.name.startswith("y")
                 for f in dataclasses.fields(s))
  np.testing.assert_array_equal(s.x_test, a.x_test)
  np.testing.assert_array_equal(s.y_test, a.y_test)
  assert s.num_classes == 10


def test_split_deterministic_and_seed_dependent():
  a = _arrays()
  s1 = data.semi_supervised_split(a, 40, seed=0)
  s2 = data.semi_supervised_split(a, 40, seed=0)
  s3 = data.semi_supervised_split(a, 40, seed=1)
  np.testing.assert_array_equal(s1.x_labelled, s2.x_labelled)
  np.testing.assert_array_equal(s1.x_unlabelled, s2.x_unlabelled)
  np.testing.assert_array_equal(s1.y_labelled, s2.y_labelled)
  assert set(_ids(s1.x_labelled)) != set(_ids(s3.x_labelled))


def test_split_errors():
  a = _arrays()
  with pytest.raises(data.DataError, match="not divisible by num_classes=10"):
    data.semi_supervised_split(a, 45, seed=0)
  with pytest.raises(data.DataError, match=r"must be in \[1, 200\]"):
    data.semi_supervised_split(a, 0, seed=0)
  with pytest.raises(data.DataError, match=r"must be in \[1, 200\]"):
    data.semi_supervised_split(a, 210, seed=0)
  # Class 7 has only 2 examples: 10 labels per class cannot be met.
  y = a.y_train.copy()
  sevens = np.flatnonzero(y == 7)
  y[sevens[2:]] = 0
  skewed = dataclasses.replace(a, y_train=y)
  with pytest.raises(data.DataError, match="class 7 has only 2") as err:
    data.semi_supervised_split(skewed, 100, seed=0)
  assert "needs 10 per class" in str(err.value)


def test_split_fully_supervised():
  a = _arrays(n_train=203)  # Not divisible by 10: still allowed.
  s = data.semi_supervised_split(a, 203, seed=0)
  assert s.x_labelled.shape == (203, 8, 8, 1)
  assert s.x_unlabelled.shape == (0, 8, 8, 1)
  np.testing.assert_array_equal(s.y_labelled, a.y_train)


def test_split_mean_std_from_full_training_set():
  a = _arrays(shape=(4, 4, 3))
  s = data.semi_supervised_split(a, 20, seed=0)
  x = a.x_train.astype(np.float64) / 255
  np.testing.assert_allclose(s.mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(s.std, x.std(axis=(0, 1, 2)), rtol=1e-5)
  assert s.mean.dtype == np.float32 and s.std.dtype == np.float32
  assert s.mean.shape == (3,)


# ---------------------------------------------------------------------------
# On-device pieces.
# ---------------------------------------------------------------------------


def test_normalize():
  x = _id_images(6, (4, 4, 3))
  mean = np.array([0.1, 0.5, 0.9], np.float32)
  std = np.array([0.2, 0.3, 0.4], np.float32)
  out = jax.jit(data.normalize)(x, mean, std)
  assert out.dtype == jnp.float32 and out.shape == x.shape
  np.testing.assert_allclose(out, (x / 255.0 - mean) / std, rtol=1e-5,
                             atol=1e-6)
  assert data.normalize(x, mean, std, jnp.bfloat16).dtype == jnp.bfloat16


# As in the train step: jitted, with padding and flip static.
_crop_flip = jax.jit(data.random_crop_flip, static_argnames=("padding", "flip"))


def test_crop_flip_shape_dtype_and_identity():
  x = _id_images(16, (8, 8, 3))
  key = jax.random.key(0)
  out = _crop_flip(key, x, padding=3)
  assert out.shape == x.shape and out.dtype == jnp.uint8
  np.testing.assert_array_equal(
      _crop_flip(key, x, padding=0, flip=False), x
  )
  # padding=0 with flips: every image is either itself or its mirror, and
  # both happen.
  flipped = np.asarray(_crop_flip(key, x, padding=0))
  same = np.all(flipped == x, axis=(1, 2, 3))
  mirrored = np.all(flipped == x[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored) and same.any() and mirrored.any()
  # Same key, same result; different key, different result.
  np.testing.assert_array_equal(_crop_flip(key, x, padding=3), out)
  assert not np.array_equal(_crop_flip(jax.random.key(1), x, padding=3), out)


def test_crop_is_shifted_window_of_zero_padded_image():
  p, n = 3, 16
  x = _id_images(n, (8, 8, 3))
  fn = _crop_flip
  out = np.asarray(fn(jax.random.key(7), x, padding=p, flip=False))
  padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))  # zero padding
  offsets = set()
  for i in range(n):
    matches = [
        (dy, dx)
        for dy in range(2 * p + 1)
        for dx in range(2 * p + 1)
        if np.array_equal(out[i], padded[i, dy:dy + 8, dx:dx + 8])
    ]
    assert matches, f"image {i} is not a window of its padded image"
    offsets.update(matches)
  assert len(offsets) > 5  # offsets really vary across examples
  # With flips on, each output is a window or a mirrored window.
  out_f = np.asarray(fn(jax.random.key(7), x, padding=p, flip=True))
  for i in range(n):
    assert any(
        np.array_equal(out_f[i], win) or np.array_equal(out_f[i], win[:, ::-1])
        for win in (
            padded[i, dy:dy + 8, dx:dx + 8]
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
        )
    )


def _offsets_and_flips(out, padding):
  """Reads each crop's offset and flip back from position-coded images.

  The input pixel (h, w) holds ``1 + 8 h + w`` (0 is left for the zero
  padding). Output pixels (3, 3) and (3, 4) of an 8x8 crop never fall in
  the padding for ``padding <= 3``; their source columns go up by one
  unless the crop was mirrored.
  """
  out = np.asarray(out)[..., 0].astype(np.int64) - 1
  h, w3 = np.divmod(out[:, 3, 3], 8)
  flipped = out[:, 3, 4] % 8 - w3 == -1
  dy = h - 3 + padding
  dx = w3 - np.where(flipped, 4, 3) + padding
  return dy, dx, flipped


def test_crop_offsets_cover_the_range_uniformly_and_flips_are_fair():
  p, n = 2, 2500
  position = (1 + np.arange(64, dtype=np.uint8)).reshape(1, 8, 8, 1)
  x = np.repeat(position, n, axis=0)
  key = jax.random.key(3)
  dy, dx, flipped = _offsets_and_flips(_crop_flip(key, x, padding=p), p)
  counts = np.zeros((2 * p + 1, 2 * p + 1), np.int64)
  np.add.at(counts, (dy, dx), 1)
  assert counts.sum() == n  # every decoded offset lies in [0, 2p]^2
  # Each of the 25 offsets has probability 1/25: 100 expected, sd ~9.8.
  assert counts.min() >= 55 and counts.max() <= 145, counts
  assert abs(flipped.mean() - 0.5) < 0.05  # sd 0.01
  # The decoding is right: re-cropping at the decoded offsets reproduces it.
  padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  out = np.asarray(_crop_flip(key, x, padding=p))
  for i in range(20):
    window = padded[i, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
    np.testing.assert_array_equal(
        out[i], window[:, ::-1] if flipped[i] else window)

  # flip=False: never a mirror, and still every offset.
  dy, dx, flipped = _offsets_and_flips(
      _crop_flip(jax.random.key(4), x, padding=p, flip=False), p)
  assert not flipped.any()
  assert len(set(zip(dy.tolist(), dx.tolist()))) == (2 * p + 1)**2


def test_epoch_indices():
  fn = jax.jit(data.epoch_indices, static_argnums=(1, 2, 3))
  key = jax.random.key(42)
  n, steps, bs = 10, 5, 5  # 25 indices = 2.5 passes
  idx = np.asarray(fn(key, n, steps, bs))
  assert idx.shape == (steps, bs) and idx.dtype == np.int32
  flat = idx.reshape(-1)
  np.testing.assert_array_equal(np.sort(flat[:10]), np.arange(10))
  np.testing.assert_array_equal(np.sort(flat[10:20]), np.arange(10))
  assert len(set(flat[20:].tolist())) == 5
  # Pass p is the permutation from fold_in(key, p).
  np.testing.assert_array_equal(
      flat[10:20], jax.random.permutation(jax.random.fold_in(key, 1), n)
  )
  # Same key, same order (exact resume); different epochs differ.
  np.testing.assert_array_equal(fn(key, n, steps, bs), idx)
  epochs = [
      np.asarray(fn(jax.random.fold_in(key, e), n, steps, bs))
      for e in range(3)
  ]
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])
  for e in epochs:
    np.testing.assert_array_equal(np.sort(e.reshape(-1)[:n]), np.arange(n))


# ---------------------------------------------------------------------------
# TFDS (mocked; no network, no TensorFlow).
# ---------------------------------------------------------------------------
#
# `tfds.testing.mock_data` mocks `tfds.data_source` without TensorFlow. Its
# default random generator is not usable here: in tfds 4.9.10 the mocked
# ArrayRecord source's `__getitems__` is attached as a plain attribute of a
# MagicMock and is then called without `self` (TypeError: _getitems() missing
# 'record_keys'), and its random labels cannot be checked anyway. We use the
# documented manual hook instead, `mock_data(as_data_source_fn=...)`, which
# replaces `DatasetBuilder.as_data_source` while the rest of
# `tfds.data_source` (builder lookup, split argument, download skipping) runs
# for real.


class _FakeSource:
  """Random-access source with known records; counts what was read."""

  def __init__(self, x, y, batched=True):
    self._x, self._y = x, y
    self.reads = 0
    if batched:
      self.__getitems__ = self._getitems

  def __len__(self):
    return len(self._y)

  def __getitem__(self, i):
    self.reads += 1
    return {"image": self._x[i], "label": np.int64(self._y[i]), "id": str(i)}

  def _getitems(self, keys):
    return [self[k] for k in keys]


def _mock_cifar(monkeypatch, batched, n_train=2500, n_test=300):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  a = _arrays(n_train, n_test, shape=(32, 32, 3))
  sources, calls = {}, []

  def as_data_source(builder, split, **kwargs):
    del kwargs
    calls.append((builder.name, split))
    x, y = (a.x_train, a.y_train) if split == "train" else (a.x_test, a.y_test)
    sources[split] = _FakeSource(x, y, batched)
    return sources[split]

  # Small chunks so the early stop for num_train is observable.
  monkeypatch.setattr(data, "_TFDS_CHUNK", 256)
  ctx = tfds.testing.mock_data(
      policy=tfds.testing.MockPolicy.USE_CODE,
      as_data_source_fn=as_data_source,
  )
  return a, sources, calls, ctx


@pytest.mark.parametrize("batched", [True, False])
def test_tfds_mocked(tmp_path, monkeypatch, no_network, batched):
  a, sources, calls, ctx = _mock_cifar(monkeypatch, batched)
  with ctx:
    got = data.load_arrays("tfds", "cifar10", data_dir=str(tmp_path))
  assert calls == [("cifar10", "train"), ("cifar10", "test")]
  assert got.num_classes == 10
  for key in data.NPZ_KEYS:
    np.testing.assert_array_equal(getattr(got, key), getattr(a, key))
  assert got.y_train.dtype == np.int32 and got.x_train.dtype == np.uint8
  assert sources["train"].reads == 2500


def test_tfds_mocked_subset_stops_early(tmp_path, monkeypatch, no_network):
  a, sources, _, ctx = _mock_cifar(monkeypatch, batched=True)
  with ctx:
    got = data.load_arrays(
        "tfds", "cifar10", data_dir=str(tmp_path), num_train=50, num_test=20
    )
  np.testing.assert_array_equal(np.bincount(got.y_train), [5] * 10)
  np.testing.assert_array_equal(np.bincount(got.y_test), [2] * 10)
  # Same subset as taking the balanced prefix of the full split ...
  x_ref, y_ref = data.balanced_prefix(a.x_train, a.y_train, 50, 10, "train")
  np.testing.assert_array_equal(got.x_train, x_ref)
  np.testing.assert_array_equal(got.y_train, y_ref)
  # ... without decoding the whole split.
  assert sources["train"].reads < 2500


def test_tfds_mocked_bad_record_shape(tmp_path, monkeypatch, no_network):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def as_data_source(builder, split, **kwargs):
    del builder, split, kwargs
    return [{"image": np.zeros((28, 28, 1), np.uint8), "label": 0}]

  with tfds.testing.mock_data(
      policy=tfds.testing.MockPolicy.USE_CODE, as_data_source_fn=as_data_source
  ):
    with pytest.raises(data.DataError, match=r"image shape \(28, 28, 1\)"):
      data.load_arrays("tfds", "cifar10", data_dir=str(tmp_path))


def test_tfds_not_prepared_says_how_to_prepare(tmp_path, no_network):
  with pytest.raises(data.DataError) as err:
    data.load_arrays("tfds", "cifar100", data_dir=str(tmp_path))
  msg = str(err.value)
  for part in [
      "'cifar100'",
      str(tmp_path),
      "not prepared",
      'pip install -e ".[prepare]"',
      f"tfds.builder('cifar100', data_dir='{tmp_path}')"
      ".download_and_prepare(file_format='array_record')",
      "Colab",
      "--config.data.source=/path/file.npz",
  ]:
    assert part in msg, (part, msg)
  # Nothing was downloaded or written.
  assert not any(
      files for _, _, files in os.walk(tmp_path)
  ), list(os.walk(tmp_path))
