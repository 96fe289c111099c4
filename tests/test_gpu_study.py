"""experiments/gpu_study.sh through its CPU smoke path: study outputs and benchmark JSON."""
import json
import os
import subprocess

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_study_script_cpu_smoke(tmp_path):
  rng = np.random.default_rng(0)
  array = str(tmp_path / "c10.npz")
  np.savez(array, x_train=rng.integers(0, 256, (400, 32, 32, 3), np.uint8),
           y_train=np.arange(400) % 10,
           x_test=rng.integers(0, 256, (100, 32, 32, 3), np.uint8),
           y_test=np.arange(100) % 10)
  out = str(tmp_path / "gpu_study")
  env = dict(os.environ, CONFIG="configs/cifar10_gpu_study.py:smoke",
             EPOCHS="1", SEEDS="0", REGIMES="erm,mix2", JOBS="2",
             BENCH_ARGS="--tiny")
  proc = subprocess.run(["bash", "experiments/gpu_study.sh", "cifar10", array, out],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "study wall time:" in proc.stdout and "(2 runs at once)" in proc.stdout
  for run in ("erm_seed0", "mix2_seed0"):
    with open(os.path.join(out, "runs", run, "config.json")) as f:
      config = json.load(f)["config"]
    assert config["data.source"] == array
    assert config["data.dataset"] == "cifar10"
    assert os.path.getsize(os.path.join(out, "runs", run, "metrics.jsonl")) > 0
  assert os.path.exists(os.path.join(out, "claims.md"))
  assert os.path.exists(os.path.join(out, "figures", "paired_differences.png"))
  with open(os.path.join(out, "benchmark.json")) as f:
    report = json.load(f)
  assert report["train"] and report["linearity"]


def test_gpu_study_script_rejects_an_unknown_dataset(tmp_path):
  proc = subprocess.run(["bash", "experiments/gpu_study.sh", "svhn",
                         str(tmp_path / "x.npz"), str(tmp_path / "out")],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
      "error: DATASET 'svhn': expected cifar10 or cifar100")
  assert not os.path.exists(tmp_path / "out")
