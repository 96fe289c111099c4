r"""Kills a training run with SIGKILL at random moments, resumes it, and checks
that the result is bit-identical to an uninterrupted run.

    python experiments/kill_resume.py                     # the default run, 5 kills
    python experiments/kill_resume.py --kills=10 --seed=3
    python experiments/kill_resume.py --config=configs/default.py:smoke \
        --override=train.epochs=4 --kills=3

Runs ``experiments/run.py`` (same command every time, like a user pressing
"up, enter" after a crash) first uninterrupted into ``<root>/reference``,
then into ``<root>/killed`` killing it at ``--kills`` points drawn from
``--seed``, each of one kind:

* ``startup``:   a random moment in the first seconds (imports, compile,
  restore);
* ``record``:    the moment a new epoch record lands in metrics.jsonl (the
  epoch's checkpoint is being written);
* ``mid-epoch``: a random fraction of an epoch after a record;
* ``mid-save``:  while a checkpoint is half-committed (uses the test-only
  ``MIXLIN_TEST_CHECKPOINT_COMMIT_DELAY_S`` hook of mixlin_jax.checkpoints);

and finally lets it finish. Compares every metrics record (without the
timing fields ``seconds`` and ``images_per_second``) and every checkpoint's
arrays byte for byte. Exits 0 if identical, 1 if not. Bit-identity is
promised on CPU; on GPUs some XLA kernels are not deterministic.

By default the processes share a persistent JAX compilation cache in
``<root>/jax_cache`` so that restarts do not recompile (compiled programs are
the same either way); ``--nojax_cache`` turns it off.
"""

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from absl import app
from absl import flags

from mixlin_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = flags.DEFINE_string("config", os.path.join(ROOT, "configs",
                                                     "default.py"),
                              "Config file[:variant], as for run.py.")
_OVERRIDE = flags.DEFINE_multi_string(
    "override", [], "Config overrides field=value (as --config.field=value).")
_KILLS = flags.DEFINE_integer("kills", 5, "How many times to kill the run.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill points.")
_WORKROOT = flags.DEFINE_string("root", os.path.join("workdirs", "kill_resume"),
                                "Folder for the two workdirs (emptied first).")
_JAX_CACHE = flags.DEFINE_bool("jax_cache", True,
                               "Share a persistent compilation cache.")
_TIMEOUT = flags.DEFINE_integer("timeout_s", 1800,
                                "Give up on one process after this long.")

TIMING_FIELDS = ("seconds", "images_per_second")
TMP_GLOB = "*.orbax-checkpoint-tmp*"
KINDS = ("startup", "record", "mid-epoch", "mid-save")


def _run_args(workdir):
  return ([sys.executable, os.path.join(ROOT, "experiments", "run.py"),
           f"--config={_CONFIG.value}", f"--workdir={workdir}",
           "--progress=false"] +
          [f"--config.{o}" for o in _OVERRIDE.value])


def _env(root, **extra):
  env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
  if _JAX_CACHE.value:
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(root, "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _records(workdir):
  from mixlin_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  return workdir_lib.read_metrics(workdir)


def _log_text(path):
  with open(path, errors="replace") as f:
    return f.read()


def _start(workdir, env, log_path):
  with open(log_path, "ab") as out:
    return subprocess.Popen(_run_args(workdir), env=env, stdout=out,
                            stderr=subprocess.STDOUT, cwd=ROOT)


def _wait(predicate, proc, timeout):
  """True when predicate holds; False if the process ended first."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.005)
  proc.kill()
  raise TimeoutError("a run.py process did not progress in time")


def _one_kill(kind, rng, workdir, env, log_path, epoch_seconds, skip):
  """Starts run.py, kills it as ``kind`` says; returns a description or None.

  ``skip`` epochs are let through first (kinds other than startup), so the
  kills spread over the whole run.
  """
  from mixlin_jax import checkpoints as ckpt_lib  # pylint: disable=import-outside-toplevel
  ckpt_dir = os.path.join(workdir, "checkpoints")
  seen = {r.get("epoch") for r in _records(workdir)}
  new_records = lambda: len({r.get("epoch") for r in _records(workdir)}
                            - seen)
  if kind == "mid-save":
    # Every commit pauses briefly; the (skip + 1)-th is killed in its pause.
    env = dict(env, **{ckpt_lib.COMMIT_DELAY_ENV: "3"})
  pauses = _log_text(log_path).count(ckpt_lib.COMMIT_DELAY_ENV)
  proc = _start(workdir, env, log_path)
  t0 = time.monotonic()
  timeout = _TIMEOUT.value
  if kind == "startup":
    delay = rng.uniform(0.5, 8.0)
    ok = _wait(lambda: time.monotonic() - t0 > delay, proc, timeout)
    what = f"startup +{delay:.1f}s"
  elif kind == "record":
    ok = _wait(lambda: new_records() > skip, proc, timeout)
    what = f"as the record of its epoch {skip + 1} landed"
  elif kind == "mid-epoch":
    fraction = rng.random()
    ok = _wait(lambda: new_records() > skip, proc, timeout)
    time.sleep(fraction * epoch_seconds)
    ok = ok and proc.poll() is None
    what = f"{fraction:.2f} of an epoch after its record {skip + 1}"
  else:
    ok = _wait(lambda: _log_text(log_path).count(ckpt_lib.COMMIT_DELAY_ENV)
               > pauses + skip, proc, timeout)
    what = f"while committing its checkpoint {skip + 1}"
  if not ok:
    proc.wait()
    return None
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  names = sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else []
  return (f"{kind:9s} {what}, {time.monotonic() - t0:.1f}s after start; "
          f"left checkpoints {names}, records "
          f"{[r.get('epoch') for r in _records(workdir)]}")


def _compare(reference, killed):
  """List of differences (empty when bit-identical)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mixlin_jax import checkpoints as ckpt_lib  # pylint: disable=import-outside-toplevel
  strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING_FIELDS}
                      for r in rs]
  problems = []
  ra, rb = strip(_records(reference)), strip(_records(killed))
  if json.dumps(ra, sort_keys=True) != json.dumps(rb, sort_keys=True):
    problems.append(f"metrics.jsonl differs ({len(ra)} vs {len(rb)} records)")
  ca = ckpt_lib.Checkpoints(os.path.join(reference, "checkpoints"),
                            read_only=True)
  cb = ckpt_lib.Checkpoints(os.path.join(killed, "checkpoints"),
                            read_only=True)
  try:
    if ca.epochs() != cb.epochs():
      problems.append(f"checkpoints differ: {ca.epochs()} vs {cb.epochs()}")
    for epoch in sorted(set(ca.epochs()) & set(cb.epochs())):
      sa, _ = ca.restore(epoch, None)
      sb, _ = cb.restore(epoch, None)
      la = jax.tree.flatten_with_path(sa)[0]
      lb = jax.tree.flatten_with_path(sb)[0]
      if [p for p, _ in la] != [p for p, _ in lb]:
        problems.append(f"epoch {epoch}: state structures differ")
        continue
      for (path, a), (_, b) in zip(la, lb):
        if np.asarray(a).tobytes() != np.asarray(b).tobytes():
          problems.append(f"epoch {epoch}: {jax.tree_util.keystr(path)} "
                          "differs")
  finally:
    ca.close()
    cb.close()
  leftovers = glob.glob(os.path.join(killed, "checkpoints", TMP_GLOB))
  if leftovers:
    problems.append(f"unfinished saves left behind: {leftovers}")
  return problems


def main(argv):
  cli.reject_extra_arguments(argv)
  cli.setup_logging()  # Orbax chatter on restore only from WARNING
  root = os.path.abspath(_WORKROOT.value)
  reference = os.path.join(root, "reference")
  killed = os.path.join(root, "killed")
  for d in (reference, killed):
    shutil.rmtree(d, ignore_errors=True)
  os.makedirs(root, exist_ok=True)
  rng = random.Random(_SEED.value)
  env = _env(root)

  t0 = time.monotonic()
  out = subprocess.run(_run_args(reference), env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=_TIMEOUT.value)
  if out.returncode != 0:
    print(out.stderr[-3000:])
    sys.exit("The reference run failed.")
  records = _records(reference)
  epoch_seconds = sorted(r["seconds"]["train"] for r in records)[
      len(records) // 2]
  print(f"reference: {len(records)} epochs in {time.monotonic() - t0:.0f}s "
        f"(median epoch {epoch_seconds:.2f}s of training)", flush=True)

  log_path = os.path.join(root, "killed.log")
  open(log_path, "w").close()
  landed = []
  while len(landed) < _KILLS.value:
    kind = rng.choice(KINDS)
    done = len(_records(killed))
    budget = max(1, (len(records) - done) // (_KILLS.value - len(landed) + 1))
    what = _one_kill(kind, rng, killed, env, log_path, epoch_seconds,
                     rng.randrange(budget))
    if what is None:
      print(f"kill {len(landed) + 1} ({kind}) missed: the run had finished. "
            "Use fewer --kills or more epochs.")
      break
    landed.append(what)
    print(f"kill {len(landed)}: {what}", flush=True)

  out = subprocess.run(_run_args(killed), env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=_TIMEOUT.value)
  if out.returncode != 0:
    print(out.stderr[-3000:])
    sys.exit("The final resumed run failed.")
  problems = _compare(reference, killed)
  verdict = "BIT-IDENTICAL" if not problems else "DIFFERENT"
  print(f"{len(landed)} kills landed; resumed result vs uninterrupted: "
        f"{verdict}")
  for p in problems[:20]:
    print("  " + p)
  sys.exit(0 if not problems else 1)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser())
