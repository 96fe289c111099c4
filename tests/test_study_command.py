"""experiments/study.py end to end on the digits smoke config: run, kill, resume, skip, aggregate."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = [sys.executable, os.path.join(ROOT, "experiments", "study.py")]
ARGS = ["--config=configs/default.py:smoke", "--regimes=erm,mix2",
        "--seeds=0,1", "--config.train.epochs=4"]


def _run(args, **kw):
  return subprocess.run(STUDY + args, cwd=ROOT, capture_output=True,
                        text=True, timeout=600, **kw)


def _lines(path):
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum(1 for line in f if line.strip())


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  return str(tmp_path_factory.mktemp("study") / "digits_smoke")


def test_print_commands_lists_one_run_py_command_per_run(study):
  proc = _run(ARGS + [f"--out={study}", "--print_commands"])
  assert proc.returncode == 0, proc.stderr
  commands = proc.stdout.strip().splitlines()
  assert len(commands) == 4
  assert "experiments/run.py --config=configs/default.py:smoke,erm " in commands[0]
  assert "--config.train.epochs=4 --config.seed=0" in commands[0]
  assert commands[0].endswith(f"--workdir={study}/runs/erm_seed0")
  assert commands[3].endswith(f"--workdir={study}/runs/mix2_seed1")
  assert not os.path.exists(study)  # printing runs nothing


def test_killed_study_resumes_skips_finished_and_aggregates(study):
  first = os.path.join(study, "runs", "erm_seed0", "metrics.jsonl")
  proc = subprocess.Popen(STUDY + ARGS + [f"--out={study}"], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  deadline = time.time() + 300
  # Two logged epochs: epoch 1's checkpoint is then surely complete (it is
  # saved before epoch 2 starts), so the rerun must resume from it.
  while _lines(first) < 2 and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)  # the study and its run.py child
  proc.wait()
  done_before = _lines(first)
  assert 2 <= done_before < 4, "the kill should land inside the first run"

  resumed = _run(ARGS + [f"--out={study}"])
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  out = resumed.stdout
  assert "4 runs, 0 finished, 4 to run" in out
  assert f"erm_seed0: incomplete ({done_before}/4 epochs) -> running" in out
  log = open(os.path.join(study, "runs", "erm_seed0", "log.txt")).read()
  assert "Resuming" in log
  with open(first) as f:
    epochs = [json.loads(line)["epoch"] for line in f if line.strip()]
  assert epochs == [1, 2, 3, 4]  # no epoch lost or logged twice
  assert "aggregated 4 finished runs" in out
  for name in ("claims.md", "claims.json", "tables/paired_differences.csv",
               "figures/paired_differences.png"):
    assert os.path.getsize(os.path.join(study, name)) > 0

  again = _run(ARGS + [f"--out={study}"])
  assert again.returncode == 0, again.stderr
  assert "4 runs, 4 finished, 0 to run" in again.stdout
  assert "running" not in again.stdout


def test_aggregate_only_names_missing_runs(study):
  os.rename(os.path.join(study, "runs", "mix2_seed1"),
            os.path.join(study, "mix2_seed1.moved"))
  proc = _run([f"--out={study}", "--aggregate_only", "--regimes=erm,mix2",
               "--seeds=0,1"])
  assert proc.returncode == 0, proc.stderr
  assert "not aggregated: mix2_seed1 (missing)" in proc.stdout
  assert "aggregated 3 finished runs" in proc.stdout
  assert "mix2_seed1 (missing)" in open(os.path.join(study, "claims.md")).read()


def test_bad_regime_is_one_line_error_before_any_run(tmp_path):
  proc = _run(["--config=configs/default.py:smoke", "--regimes=erm,mixup",
               f"--out={tmp_path}/s"])
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("error: ")
  assert "'mixup'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
  assert not os.path.exists(f"{tmp_path}/s")


def test_two_runs_at_once_killed_then_resumed(tmp_path):
  """--jobs=2: both runs start before either ends; a kill of the study and
  its runs loses nothing, and the rerun resumes each unfinished run."""
  out = str(tmp_path / "jobs")
  args = ["--config=configs/default.py:smoke", "--regimes=erm,mix2",
          "--seeds=0", "--config.train.epochs=4", "--jobs=2", f"--out={out}"]
  metrics = {r: os.path.join(out, "runs", f"{r}_seed0", "metrics.jsonl")
             for r in ("erm", "mix2")}
  log_path = tmp_path / "study.log"
  with open(log_path, "w") as log:
    proc = subprocess.Popen(STUDY + args, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.time() + 300
    while (max(_lines(m) for m in metrics.values()) < 2
           and time.time() < deadline and proc.poll() is None):
      time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the study and both run.py children
    proc.wait()
  first = log_path.read_text()
  starts = [first.index(f"{r}_seed0: missing -> running") for r in metrics]
  assert "finished]" not in first[:max(starts)], first  # two at once
  before = {r: _lines(m) for r, m in metrics.items()}
  assert min(before.values()) < 4, "the kill should land inside a run"

  resumed = _run(args)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  for regime, path in metrics.items():
    with open(path) as f:
      assert [json.loads(l)["epoch"] for l in f if l.strip()] == [1, 2, 3, 4]
    # Saves are asynchronous (they overlap the next epoch): epoch 1's
    # checkpoint is surely complete once epoch 3 is logged, since epoch 2's
    # save waited for it; with two lines it may still have been writing.
    if 3 <= before[regime] < 4:
      log = open(os.path.join(out, "runs", f"{regime}_seed0", "log.txt")).read()
      assert "Resuming" in log, regime
  assert "[2/2 finished]" in resumed.stdout
  assert "aggregated 2 finished runs" in resumed.stdout


def test_job_slots_split_the_cores_and_the_gpu_memory():
  from mixlin_jax import studies  # pylint: disable=import-outside-toplevel
  assert studies.job_slots(1) == [{"cpus": None, "env": {}}]
  slots = studies.job_slots(2, cpus=[0, 1, 2, 3, 4])
  assert [s["cpus"] for s in slots] == [(0, 1), (2, 3)]
  assert all(s["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.400" for s in slots)
  assert [s["cpus"] for s in studies.job_slots(4, cpus=[0, 1])] == [None] * 4
  with pytest.raises(ValueError, match="jobs: expected a positive number"):
    studies.job_slots(0)
