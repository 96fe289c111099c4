"""Tests for mixlin_jax.analysis on one tiny real run (CPU, digits, no network).

One module-scoped training run (2 epochs of the smoke config on a subset of
the embedded digits) is shared by every test: it is the expensive part
(compilation). It trains on the 8 fake CPU devices of conftest.py, and the
analysis restores onto a one-device mesh, so the cross-mesh restore path is
exercised too. Tests that damage checkpoints work on a copy.
"""

import json
import logging
import math
import os
import shutil

import numpy as np
import pytest

from mixlin_jax import analysis
from mixlin_jax import workdir as workdir_lib
from mixlin_jax.linearity import METRICS

import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 2
NUM_TUPLES = 16


def _load_config():
  # ERM: the cheapest train step to compile; the analysis does not care.
  c = helpers.load_config(helpers.DEFAULT_CONFIG, "smoke,erm")
  c.unlock()
  c.train.epochs = EPOCHS
  c.data.num_train = 320  # 20 steps per epoch at batch 16
  c.data.num_test = 160
  c.linearity.num_tuples = NUM_TUPLES
  c.linearity.batch_size = 8
  c.lock()
  return c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  from mixlin_jax import train  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("analysis") / "tiny")
  train.train_and_evaluate(_load_config(), workdir, progress=False)
  return workdir


@pytest.fixture(scope="module")
def analysed(run_dir):
  """Rows recomputed from the checkpoints, and the checkpoint listing."""
  before = _listing(os.path.join(run_dir, "checkpoints"))
  rows = analysis.analyze_workdir(run_dir, progress=False)
  after = _listing(os.path.join(run_dir, "checkpoints"))
  return rows, before, after


def _listing(root):
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      st = os.lstat(path)
      out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns,
                                          st.st_mode)
  return out


def _is_png(path):
  with open(path, "rb") as f:
    head = f.read(8)
  return head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 2000


def _copy_run(run_dir, tmp_path, name):
  dest = str(tmp_path / name)
  shutil.copytree(run_dir, dest)
  return dest


# ---------------------------------------------------------------------------


def test_config_round_trip(run_dir):
  c = analysis.config_from_workdir(run_dir)
  assert c.train.epochs == EPOCHS
  assert c.linearity.num_tuples == NUM_TUPLES
  assert isinstance(c.linearity.grid, tuple)
  assert c.mixup.mode == "none" and c.data.num_train == 320
  from mixlin_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  assert config_lib.flatten(c) == workdir_lib.read_config(run_dir)
  c2 = analysis.config_from_workdir(
      run_dir, {"linearity.split": "train", "linearity.num_tuples": 4})
  assert (c2.linearity.split, c2.linearity.num_tuples) == ("train", 4)
  with pytest.raises(config_lib.ConfigError, match="no_such"):
    analysis.config_from_workdir(run_dir, {"linearity.no_such": 1})


def test_logged_learning_rate_is_the_last_steps(run_dir):
  """Each epoch logs the rate its last step used: schedule(step - 1).

  The optimizer's rate at each step is pinned to the same reference formula
  in test_train_reference.py.
  """
  config = _load_config()
  steps_per_epoch = 320 // config.train.batch_size
  records = helpers.read_records(run_dir)
  assert [r["step"] for r in records] == [
      steps_per_epoch * e for e in range(1, EPOCHS + 1)]
  for r in records:
    assert r["learning_rate"] == pytest.approx(
        helpers.reference_learning_rate(config, steps_per_epoch,
                                        r["step"] - 1), rel=1e-5), r["epoch"]
  assert records[-1]["learning_rate"] > 0  # the last step's, not the end's


def test_reproduces_logged_values(run_dir, analysed):
  rows, _, _ = analysed
  logged = analysis.logged_linearity_rows(run_dir)
  key = lambda r: (r["epoch"], r["layer"], r["metric"], r["weight_index"])
  recomputed = {key(r): r for r in rows}
  assert set(recomputed) == {key(r) for r in logged}
  for r in logged:
    got = recomputed[key(r)]
    np.testing.assert_allclose(got["value"], r["value"], rtol=2e-4,
                               atol=1e-7, err_msg=str(key(r)))
    np.testing.assert_allclose(got["stderr"], r["stderr"], rtol=2e-3,
                               atol=1e-7, err_msg=str(key(r)))
    assert got["t"] == r["t"] and got["weights"] == r["weights"]


def test_table_is_complete(run_dir, analysed, tmp_path):
  rows, _, _ = analysed
  record = workdir_lib.read_metrics(run_dir)[-1]["linearity"]
  layers, weights = record["layers"], record["weights"]
  assert len(layers) == 5 and len(weights) == 9  # small CNN, K = 2 grid
  expected = {(e, l, m, w) for e in range(1, EPOCHS + 1) for l in layers
              for m in METRICS for w in range(len(weights))}
  got = [(r["epoch"], r["layer"], r["metric"], r["weight_index"]) for r in rows]
  assert len(got) == len(set(got)) and set(got) == expected
  for r in rows:
    assert r["run"] == "tiny" and r["num_tuples"] == NUM_TUPLES
    assert math.isfinite(r["value"]) and r["value"] >= 0
    np.testing.assert_allclose(float(r["weights"].split()[1]), r["t"],
                               rtol=1e-3)
  csv_path, json_path = analysis.write_table(rows, str(tmp_path))
  assert os.path.basename(csv_path) == "linearity.csv"
  with open(csv_path) as f:
    assert len(f.read().strip().splitlines()) == len(rows) + 1
  back = analysis.read_table(json_path)
  assert [key for key in back[0]] == list(rows[0])
  np.testing.assert_allclose([r["value"] for r in back],
                             [r["value"] for r in rows])


def test_checkpoints_untouched(analysed):
  _, before, after = analysed
  assert before and before == after


def test_run_analysis_writes_table_and_figures(run_dir, tmp_path):
  out = str(tmp_path / "out")
  result = analysis.run_analysis(run_dir, out, epochs=[EPOCHS],
                                 progress=False)
  assert result["skipped"] == []
  assert {r["epoch"] for r in result["rows"]} == {EPOCHS}
  names = sorted(os.listdir(out))
  assert names == ["heatmaps.png", "layer_profiles.png", "linearity.csv",
                   "linearity.json", "training_curves.png"]
  for path in result["figures"]:
    assert _is_png(path), path


# Orbax may leave a callback on its closed event loop after a failed restore.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_broken_and_missing_epochs_are_skipped(run_dir, tmp_path, caplog):
  work = _copy_run(run_dir, tmp_path, "damaged")
  ckpt = os.path.join(work, "checkpoints")
  # Epoch 1: corrupt every stored array chunk; epoch 2 stays good.
  chunks = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ckpt, "1"))
            for f in fs if os.sep + "d" + os.sep in os.path.join(d, f)]
  assert chunks
  for path in chunks:
    with open(path, "wb") as f:
      f.write(b"garbage")
  with caplog.at_level(logging.WARNING, logger="mixlin_jax"):
    rows = analysis.analyze_workdir(work, epochs=[1, 2, 7], progress=False)
  assert {r["epoch"] for r in rows} == {2}
  text = caplog.text
  assert "epoch 1 is unreadable" in text and "epoch(s) 7" in text

  # A deleted checkpoint folder: reported from metrics.jsonl, others analysed.
  shutil.rmtree(os.path.join(ckpt, "1"))
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="mixlin_jax"):
    rows = analysis.analyze_workdir(work, progress=False)
  assert {r["epoch"] for r in rows} == {2}
  assert "no finalized checkpoint for epoch(s) 1" in caplog.text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_garbled_epoch_record_does_not_block_the_others(run_dir, tmp_path,
                                                        caplog):
  """A garbled metrics JSON makes Orbax refuse the whole directory."""
  work = _copy_run(run_dir, tmp_path, "garbled")
  ckpt = os.path.join(work, "checkpoints")
  record = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ckpt, "2"))
            for f in fs if f == "metrics" and os.path.basename(d) == "metrics"]
  assert len(record) == 1
  with open(record[0], "w") as f:
    f.write("{not json")
  before = _listing(ckpt)
  with caplog.at_level(logging.WARNING, logger="mixlin_jax"):
    rows = analysis.analyze_workdir(work, progress=False)
  assert {r["epoch"] for r in rows} == {1}
  assert "epoch 2 is unreadable" in caplog.text
  assert _listing(ckpt) == before


def test_missing_workdir_parts_are_reported(tmp_path):
  with pytest.raises(analysis.AnalysisError, match="config.json"):
    analysis.analyze_workdir(str(tmp_path), progress=False)


def test_convergence_table_on_known_curves():
  rows = []
  for run, acc, loss in (("a", [0.2, 0.6, 0.9], [2.0, 1.0, 0.5]),
                         ("b", [0.1, 0.3, 0.5], [2.5, 2.0, 1.5])):
    for e, (a, l) in enumerate(zip(acc, loss), start=1):
      rows.append({"run": run, "epoch": e, "test.student_accuracy": a,
                   "train.supervised": l})
  table = analysis.convergence_table(rows)
  by_run = {r["run"]: r for r in table}
  assert by_run["a"]["target_accuracy"] == pytest.approx(0.81)
  assert by_run["a"]["epochs_to_target_accuracy"] == 3
  assert by_run["b"]["epochs_to_target_accuracy"] is None
  assert by_run["a"]["target_loss"] == pytest.approx(0.5 / 0.9)
  assert by_run["a"]["epochs_to_target_loss"] == 3
  table = analysis.convergence_table(rows, target_accuracy=0.3,
                                     target_loss=2.0)
  assert [r["epochs_to_target_accuracy"] for r in table] == [2, 2]
  assert [r["epochs_to_target_loss"] for r in table] == [1, 2]
  assert "epochs_to_target_loss" in analysis.format_table(table)


def test_compare_two_runs(run_dir, tmp_path):
  # A second run: the same workdir under another name with a shifted
  # accuracy curve and logged linearity (compare only reads the logs).
  other = _copy_run(run_dir, tmp_path, "erm")
  records = workdir_lib.read_metrics(other)
  with open(os.path.join(other, workdir_lib.METRICS_FILE), "w") as f:
    for r in records:
      r["test"]["student_accuracy"] *= 0.5
      for layer in r["linearity"]["layers"]:
        stats = r["linearity"]["interp_error"][layer]
        stats["mean"] = [2 * v for v in stats["mean"]]
      f.write(json.dumps(r) + "\n")
  # An analysis table for one run only: the analysis overlay uses it alone.
  analysis.write_table(analysis.logged_linearity_rows(other),
                       os.path.join(other, "analysis"))
  out = str(tmp_path / "cmp")
  result = analysis.compare_runs([run_dir, other], out, names=["tiny", "erm"],
                                 metrics=["interp_error"])
  names = set(os.listdir(out))
  for prefix in ("logged", "analysis"):
    assert f"{prefix}_interp_error_by_layer.png" in names
    assert f"{prefix}_relative_error_by_layer.png" not in names
    assert f"{prefix}_final_profiles.png" in names
  assert {"training_curves.png", "convergence.csv",
          "linearity_logged.csv", "linearity_logged.json"} <= names
  for path in result["figures"]:
    assert _is_png(path), path
  with open(result["convergence"]) as f:
    lines = f.read().strip().splitlines()
  assert len(lines) == 3 and lines[0].startswith("run,")
  assert [r["run"] for r in result["convergence_rows"]] == ["tiny", "erm"]


def test_cli_entry_points(run_dir, tmp_path):
  """The absl scripts parse their flags and call the library (no recompute)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  out = str(tmp_path / "cli_cmp")
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "compare.py"),
       run_dir, run_dir, "--names=a,b", f"--out={out}",
       "--metrics=tangent_residual"],
      capture_output=True, text=True, timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr
  assert "Convergence" in proc.stdout and os.path.exists(
      os.path.join(out, "convergence.csv"))
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "analyze.py"),
       f"--workdir={tmp_path / 'nope'}"],
      capture_output=True, text=True, timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2 and "config.json" in proc.stderr
