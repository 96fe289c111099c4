"""Configs load, lock against typos, and every validation rule names its field."""
import glob
import os
import re
import stat
import sys

import pytest

from mixlin_jax import config as config_lib

import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def test_every_required_config_exists():
  names = {os.path.basename(p)[:-3] for p in CONFIG_FILES}
  for required in ["default", "cifar10_erm", "cifar10_supmix2", "cifar10_mix2",
                   "cifar10_mix3", "cifar100_erm", "cifar100_supmix2",
                   "cifar100_mix2", "cifar100_mix3", "svhn_mix2"]:
    assert required in names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_configs_are_valid_and_documented(path, arg):
  c = helpers.load_config(path, arg)
  config_lib.validate(c, device_count=1)
  with open(path) as f:
    assert "python experiments/run.py --config=configs/" in f.read()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_array_file_configs_say_how_to_make_the_file(path):
  """A config of a downloaded dataset names the script that turns the
  public archive into the array file it reads."""
  c = helpers.load_config(path, None)
  if c.data.dataset == "digits":
    return
  with open(path) as f:
    text = f.read()
  assert f"python experiments/make_array_file.py {c.data.dataset} " in text


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_regime_names_match_mixup_block(path):
  c = helpers.load_config(path)
  name = os.path.basename(path)[:-3].split("_")[-1]
  if name == "study":  # study.py chooses the regime of each run
    with open(path) as f:
      assert "python experiments/study.py --config=configs/" in f.read()
    for regime in ("erm", "supmix3", "mix2"):
      config_lib.validate(helpers.load_config(path, regime), device_count=1)
    return
  expected = {"erm": ("none", None), "supmix2": ("supervised", 2),
              "mix2": ("unsupervised", 2), "mix3": ("unsupervised", 3),
              "default": ("unsupervised", 3)}[name]
  assert c.mixup.mode == expected[0]
  if expected[1]:
    assert c.mixup.num_points == expected[1]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_digit_datasets_are_never_flipped(path, arg):
  """A mirrored digit is another symbol (or none): no flips for digits/SVHN."""
  c = helpers.load_config(path, arg)
  if c.data.dataset in ("digits", "svhn_cropped"):
    assert c.data.flip is False
  else:
    assert c.data.flip is True  # CIFAR: the usual flips


def test_config_is_locked_against_typos():
  c = helpers.load_config(os.path.join(ROOT, "configs", "default.py"))
  with pytest.raises(AttributeError):
    c.train.epoch = 3  # misspelt: the field is `epochs`
  c.train.epochs = 3  # existing fields can be overridden


def test_variants_compose():
  c = helpers.load_config(os.path.join(ROOT, "configs", "cifar10_mix3.py"), "smoke,supmix4")
  assert c.model.name == "cnn" and c.train.epochs == 2
  assert (c.mixup.mode, c.mixup.num_points) == ("supervised", 4)
  with pytest.raises(config_lib.ConfigError, match="smoke, erm, supmixK, mixK"):
    helpers.load_config(os.path.join(ROOT, "configs", "default.py"), "bogus")


def _default():
  c = helpers.load_config(os.path.join(ROOT, "configs", "default.py"))
  c.unlock()
  return c


# (field path, bad value, words the message must contain)
BAD_VALUES = [
    ("data.dataset", "imagenet", "'cifar10'"),
    ("data.source", "parquet", "'tfds', 'embedded' or a path"),
    ("model.name", "vgg", "'preact_resnet18'"),
    ("model.compute_dtype", "float16", "'bfloat16'"),
    ("mixup.mode", "both", "'unsupervised'"),
    ("mixup.alpha", 0.0, "> 0"),
    ("mixup.alpha", -1.0, "> 0"),
    ("train.learning_rate", 0.0, "> 0"),
    ("train.learning_rate", -0.1, "> 0"),
    ("mixup.num_points", 0, ">= 2"),
    ("mixup.num_points", 1, ">= 2"),
    ("mixup.num_points", 65, "at most the batch"),
    ("data.num_labels", 105, "multiple of the 10 classes"),
    ("data.num_labels", 5000, "at most 1437"),
    ("train.epochs", 0, ">= 1"),
    ("train.batch_size", 0, ">= 1"),
    ("train.ema_decay", 1.0, "[0, 1)"),
    ("linearity.grid", (0.0, 0.5), "strictly between 0 and 1"),
    ("linearity.num_points", 1, ">= 2"),
    ("linearity.split", "val", "'test'"),
    ("train.weight_decay", -1e-4, ">= 0"),
]


@pytest.mark.parametrize("field,value,allowed", BAD_VALUES,
                         ids=[f"{f}={v}" for f, v, _ in BAD_VALUES])
def test_each_bad_value_is_named(field, value, allowed):
  c = _default()
  section, name = field.split(".")
  c[section][name] = value
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.validate(c)
  message = str(info.value)
  assert f"config.{field} = {value!r}" in message
  assert allowed in message


def test_embedded_source_needs_digits():
  c = _default()
  c.data.dataset = "cifar10"
  with pytest.raises(config_lib.ConfigError, match="config.data.dataset"):
    config_lib.validate(c)


def test_unsupervised_needs_unlabelled_data():
  c = _default()
  c.data.num_labels = 1430
  c.data.num_train = 1430
  with pytest.raises(config_lib.ConfigError, match="needs unlabelled data"):
    config_lib.validate(c)


def test_batch_must_divide_device_count():
  c = _default()
  c.train.batch_size = 36
  config_lib.validate(c, device_count=4)
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.train.batch_size = 36 .* multiple of the 8 devices"):
    config_lib.validate(c, device_count=8)


def test_unwritable_workdir(tmp_path):
  if os.geteuid() == 0:
    # root ignores permission bits: use a path under a regular file instead.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = str(blocker / "workdir")
  else:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    bad = str(locked / "workdir")
  with pytest.raises(config_lib.ConfigError, match="--workdir"):
    config_lib.validate(_default(), workdir=bad)
  config_lib.validate(_default(), workdir=str(tmp_path / "new" / "dir"))


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="/proc refuses new folders on Linux")
def test_workdir_that_cannot_be_created_is_refused_up_front():
  # Permission bits allow it (as root, or /proc's owner); mkdir fails.
  with pytest.raises(config_lib.ConfigError,
                     match=r"--workdir = '/proc/mixlin_wd' is not allowed: "
                     r"a directory this process can create"):
    config_lib.validate(_default(), workdir="/proc/mixlin_wd")
  assert not os.path.exists("/proc/mixlin_wd")


def test_validating_a_workdir_leaves_nothing_behind(tmp_path):
  config_lib.validate(_default(), workdir=str(tmp_path / "a" / "b"))
  config_lib.validate(_default(), workdir=str(tmp_path))
  assert not os.listdir(tmp_path)


def test_zero_unlabelled_batch_is_named_as_such():
  c = _default()
  c.train.unlabelled_batch_size = 0
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.validate(c)
  assert str(info.value).startswith(
      "config.train.unlabelled_batch_size = 0 is not allowed")


def test_mixup_needs_two_points_one_rule_everywhere():
  """K >= 2 in validation, in the variant names and in their messages."""
  c = _default()
  c.mixup.num_points = 1
  with pytest.raises(config_lib.ConfigError,
                     match=re.escape("config.mixup.num_points = 1 is not "
                                     "allowed: an integer >= 2")):
    config_lib.validate(c)
  for variant in ("mix1", "supmix1", "mix0"):
    with pytest.raises(config_lib.ConfigError,
                       match=re.escape("supmixK, mixK (K an integer >= 2")):
      helpers.load_config(os.path.join(ROOT, "configs", "default.py"),
                          variant)
  for variant in ("mix2", "supmix2", "mix10"):
    config_lib.validate(helpers.load_config(
        os.path.join(ROOT, "configs", "default.py"), variant))


def test_result_differences_ignore_neutral_fields():
  a = config_lib.flatten(_default())
  b = dict(a)
  b["checkpoint.max_to_keep"] = 3
  b["data.data_dir"] = "/elsewhere"
  assert config_lib.result_differences(a, b) == []
  b["mixup.alpha"] = 0.2
  diffs = config_lib.result_differences(a, b)
  assert diffs == ["mixup.alpha: 1.0 -> 0.2"]


def test_constants_agree_with_modules():
  from mixlin_jax import data, models
  assert tuple(models.MODEL_NAMES) == config_lib.MODEL_NAMES
  assert set(data.DATASETS) == set(config_lib.DATASET_CLASSES)
  for name, info in data.DATASETS.items():
    assert info.num_classes == config_lib.DATASET_CLASSES[name]
