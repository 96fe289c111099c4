"""Which folders a run may write into (no training: fast)."""

import json
import os

import pytest

import helpers
from mixlin_jax import workdir as workdir_lib


def _record_epoch(workdir, epoch=1):
  with open(os.path.join(workdir, workdir_lib.METRICS_FILE), "a") as f:
    f.write(json.dumps({"epoch": epoch}) + "\n")


def test_folder_of_other_files_is_refused_and_left_alone(tmp_path):
  """A mistyped --workdir (e.g. $HOME) must not receive a run."""
  (tmp_path / "thesis.tex").write_text("x")
  (tmp_path / "photos").mkdir()
  with pytest.raises(
      workdir_lib.NotAWorkdirError,
      match=r"not empty and holds no run \(photos, thesis.tex\)"):
    workdir_lib.check(str(tmp_path), helpers.tiny_config())
  with pytest.raises(workdir_lib.NotAWorkdirError):
    workdir_lib.prepare(str(tmp_path), helpers.tiny_config())
  assert sorted(os.listdir(tmp_path)) == ["photos", "thesis.tex"]


def test_new_empty_and_log_only_folders_are_accepted(tmp_path):
  """A batch job's log (`> w/log.txt 2>&1`, the study runner) comes first."""
  (tmp_path / "empty").mkdir()
  (tmp_path / "logged").mkdir()
  (tmp_path / "logged" / "log.txt").write_text("$ python run.py\n")
  (tmp_path / "logged" / "slurm-123.out").write_text("")
  for name in ("new", "empty", "logged"):
    workdir_lib.prepare(str(tmp_path / name), helpers.tiny_config())
    assert workdir_lib.read_config(str(tmp_path / name)) is not None


def test_workdir_without_a_completed_epoch_takes_a_new_config(tmp_path):
  """A first-epoch divergence must not lock the workdir to its config."""
  workdir = str(tmp_path / "w")
  workdir_lib.prepare(workdir, helpers.tiny_config(train__learning_rate=1e6))
  retry = helpers.tiny_config(train__learning_rate=0.05)
  workdir_lib.check(workdir, retry)
  workdir_lib.prepare(workdir, retry)
  with open(os.path.join(workdir, workdir_lib.CONFIG_FILE)) as f:
    recorded = json.load(f)
  assert recorded["config"]["train.learning_rate"] == 0.05
  assert "config_changes" not in recorded  # nothing ran under the old one

  # Once an epoch is complete, the config binds.
  _record_epoch(workdir)
  with pytest.raises(workdir_lib.WorkdirMismatchError,
                     match=r"train\.learning_rate: 0\.05 -> 0\.1"):
    workdir_lib.check(workdir, helpers.tiny_config(train__learning_rate=0.1))
