"""Reliability: exact resume after SIGKILL, damaged checkpoints, workdir
safety, divergence and bad command lines.

One uninterrupted in-process run of the tiny config (``helpers.tiny_config``,
4 epochs of 25 steps, linearity on) is the reference every other run must
reproduce bit for bit (metrics compared without their timing fields). The
kill test runs ``experiments/run.py`` as subprocesses on the same (fake) CPU
devices, so the same compiled programs run in both. A persistent JAX
compilation cache in pytest's cache folder keeps the many short runs cheap.
"""

import gc
import glob
import json
import logging
import os
import shutil
import signal
import statistics
import sys
import time

import jax
import numpy as np
import pytest

import helpers
from mixlin_jax import checkpoints as ckpt_lib
from mixlin_jax import config as config_lib
from mixlin_jax import train
from mixlin_jax import workdir as workdir_lib

# Orbax leaves coroutines behind when a restore fails on damaged files; their
# "Event loop is closed" on garbage collection is noise, not a test result.
pytestmark = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")

EPOCHS = helpers.TINY_OVERRIDES["train.epochs"]
TMP_GLOB = "*.orbax-checkpoint-tmp*"


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def jax_cache(request, tmp_path_factory):
  """A persistent compilation cache for this module and its subprocesses."""
  from jax._src import compilation_cache  # pylint: disable=import-outside-toplevel
  cache = getattr(request.config, "cache", None)
  path = os.environ.get("MIXLIN_TEST_JAX_CACHE") or (
      str(cache.mkdir("mixlin_jax_compilation_cache")) if cache is not None
      else str(tmp_path_factory.mktemp("jax_cache")))
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  compilation_cache.reset_cache()
  yield path
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, jax_cache):
  """The uninterrupted run: workdir, records, and each epoch's state."""
  del jax_cache
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  records = train.train_and_evaluate(helpers.tiny_config(), workdir,
                                     progress=False)
  assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
  assert [helpers.strip_timing(r) for r in records] == helpers.read_records(
      workdir)
  states = {e: helpers.restore_final(workdir, e)[1]
            for e in range(1, EPOCHS + 1)}
  return {"workdir": workdir, "records": helpers.read_records(workdir),
          "states": states,
          "epoch_seconds": statistics.median(
              r["seconds"]["train"] for r in records[1:])}


def copy_run(reference, tmp_path, name="run") -> str:
  dest = str(tmp_path / name)
  shutil.copytree(reference["workdir"], dest)
  return dest


def assert_same_as_reference(reference, workdir, context=""):
  """Every record (timing aside) and every epoch's state, bit for bit."""
  records = helpers.read_records(workdir)
  assert records == reference["records"], (
      f"metrics.jsonl differs from the uninterrupted run. {context}")
  ckpts = ckpt_lib.Checkpoints(os.path.join(workdir, "checkpoints"),
                               read_only=True)
  try:
    assert ckpts.epochs() == list(range(1, EPOCHS + 1)), context
  finally:
    ckpts.close()
  for epoch, state in reference["states"].items():
    helpers.assert_trees_bit_identical(
        helpers.restore_final(workdir, epoch)[1], state)
  assert not glob.glob(os.path.join(workdir, "checkpoints", TMP_GLOB))


# ---------------------------------------------------------------------------
# 1. Exact resume after SIGKILL


def _records_on_disk(workdir):
  """Complete records of metrics.jsonl (a torn last line is not one)."""
  return workdir_lib.read_metrics(workdir)


def _wait_for(predicate, proc, timeout, what):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      pytest.fail(f"run.py exited ({proc.returncode}) before {what}")
    time.sleep(0.005)
  proc.kill()
  proc.wait()
  pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _kill(proc):
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, (
      f"run.py had already exited ({proc.returncode}): the kill missed")


def _read(path):
  with open(path, errors="replace") as f:
    return f.read()


def _state_of(workdir):
  folder = os.path.join(workdir, "checkpoints")
  names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
  return (f"checkpoints={names}, records="
          f"{[r['epoch'] for r in _records_on_disk(workdir)]}")


def test_sigkill_anywhere_then_rerun_is_bit_identical(reference, tmp_path,
                                                      jax_cache):
  """Killed after an epoch record, mid-epoch and mid-checkpoint, then rerun."""
  workdir = str(tmp_path / "killed")
  args = helpers.tiny_flags() + [f"--workdir={workdir}", "--progress=false"]
  env = helpers.subprocess_env(jax_cache=jax_cache)
  log_path = str(tmp_path / "run.log")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  landed = []
  t0 = time.monotonic()
  startup_timeout = 180

  # Kill 1: the moment epoch 1's record is on disk (the checkpoint of epoch
  # 1 is being written or epoch 2 has just begun).
  proc = helpers.start_run_py(args, env=env, log_path=log_path)
  _wait_for(lambda: len(_records_on_disk(workdir)) >= 1, proc,
            startup_timeout, "the record of epoch 1")
  _kill(proc)
  landed.append("after record 1: " + _state_of(workdir))
  print(f"{time.monotonic() - t0:.1f}s", landed[-1], flush=True)

  # Kill 2: mid-epoch, half an epoch after a record of epoch >= 2 appears.
  proc = helpers.start_run_py(args, env=env, log_path=log_path)
  _wait_for(lambda: any(r["epoch"] >= 2 for r in _records_on_disk(workdir)),
            proc, startup_timeout, "the record of epoch 2")
  time.sleep(0.5 * reference["epoch_seconds"])
  _kill(proc)
  landed.append("mid-epoch: " + _state_of(workdir))
  print(f"{time.monotonic() - t0:.1f}s", landed[-1], flush=True)

  # Kill 3: inside a checkpoint save. The test hook holds every save open
  # after its data is written and before its commit (the rename), and logs
  # when it does, so the kill surely lands mid-save.
  hook_env = dict(env, **{ckpt_lib.COMMIT_DELAY_ENV: "120"})
  paused = lambda: _read(log_path).count(ckpt_lib.COMMIT_DELAY_ENV)
  pauses_before = paused()
  proc = helpers.start_run_py(args, env=hook_env, log_path=log_path)
  _wait_for(lambda: paused() > pauses_before, proc, startup_timeout,
            "a checkpoint save to pause before its commit")
  _kill(proc)
  partial = glob.glob(os.path.join(ckpt_dir, TMP_GLOB))
  landed.append("mid-save: " + _state_of(workdir))
  print(f"{time.monotonic() - t0:.1f}s", landed[-1], flush=True)
  assert len(partial) == 1, "the save was not left unfinished"
  unfinished = os.path.basename(partial[0]).split(".")[0]
  assert not os.path.exists(os.path.join(ckpt_dir, unfinished))

  # The same command again runs to the end.
  out = helpers.run_py(args, env=env, timeout=startup_timeout)
  with open(log_path) as f:
    context = "Kills landed: " + " | ".join(landed) + "\n" + f.read()[-3000:]
  assert out.returncode == 0, out.stderr[-3000:] + context
  assert f"Done: {EPOCHS} epochs" in out.stdout
  assert_same_as_reference(reference, workdir, context)
  assert not os.path.exists(os.path.join(workdir, "broken_checkpoints"))
  assert not [n for n in os.listdir(workdir) if n.endswith(".tmp")]


# ---------------------------------------------------------------------------
# 2. Damaged checkpoints


def _largest_file(folder):
  files = [p for p in glob.glob(os.path.join(folder, "**"), recursive=True)
           if os.path.isfile(p)]
  return max(files, key=os.path.getsize)


def _garble(path, count=64):
  data = bytearray(open(path, "rb").read())
  mid = len(data) // 2
  for i in range(mid, min(len(data), mid + count)):
    data[i] ^= 0xFF
  with open(path, "wb") as f:
    f.write(bytes(data))


def _truncate(path):
  os.truncate(path, os.path.getsize(path) // 2)


def _leave_partial_save(ckpt):
  """As if killed while writing: the epoch is only a temporary folder."""
  tmp = ckpt + ".orbax-checkpoint-tmp-1700000000000000"
  os.rename(ckpt, tmp)
  os.remove(os.path.join(tmp, "commit_success.txt"))
  _truncate(_largest_file(os.path.join(tmp, "state")))


def _empty_folder(ckpt):
  shutil.rmtree(ckpt)
  os.makedirs(ckpt)


# name -> damage to the newest checkpoint folder. All of these make it
# unusable: the run must fall back to the previous epoch.
DAMAGE = {
    "array data truncated": lambda c: _truncate(_largest_file(c + "/state")),
    "array data garbled": lambda c: _garble(_largest_file(c + "/state")),
    "array data deleted": lambda c: os.remove(_largest_file(c + "/state")),
    "all array files truncated": lambda c: [
        _truncate(p) for p in glob.glob(c + "/state/**/d/*", recursive=True)],
    "state metadata garbled": lambda c: _garble(c + "/state/_METADATA"),
    "ocdbt manifest truncated": lambda c: _truncate(
        c + "/state/manifest.ocdbt"),
    "state item deleted": lambda c: shutil.rmtree(c + "/state"),
    "metrics json garbled": lambda c: _garble(c + "/metrics/metrics", 8),
    "metrics json emptied": lambda c: open(c + "/metrics/metrics", "w").close(),
    "metrics item deleted": lambda c: shutil.rmtree(c + "/metrics"),
    "epoch folder emptied": _empty_folder,
}
# Damage to bookkeeping files that restoring does not need: the checkpoint
# is still intact (its digest proves it) and may be used as it is.
HARMLESS = {
    "_CHECKPOINT_METADATA deleted": lambda c: os.remove(
        c + "/_CHECKPOINT_METADATA"),
    "commit_success.txt deleted": lambda c: os.remove(
        c + "/commit_success.txt"),
    "state/commit_success.txt deleted": lambda c: os.remove(
        c + "/state/commit_success.txt"),
    "_CHECKPOINT_METADATA garbled": lambda c: _garble(
        c + "/_CHECKPOINT_METADATA"),
}


@pytest.mark.parametrize("kind", list(DAMAGE) + list(HARMLESS) +
                         ["partial save left behind"])
def test_damaged_newest_checkpoint_is_never_loaded(reference, tmp_path, kind,
                                                   caplog):
  workdir = copy_run(reference, tmp_path)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  newest = os.path.join(ckpt_dir, str(EPOCHS))
  if kind == "partial save left behind":
    _leave_partial_save(newest)
  else:
    {**DAMAGE, **HARMLESS}[kind](newest)
  target = reference["states"][1]

  caplog.set_level(logging.WARNING, logger="mixlin_jax")
  ckpts = ckpt_lib.Checkpoints(ckpt_dir)
  try:
    epoch, state, metrics = ckpts.restore_latest_good(target)
  finally:
    ckpts.close()

  # Whatever was loaded is exactly what was saved for that epoch.
  helpers.assert_trees_bit_identical(state, reference["states"][epoch])
  assert helpers.strip_timing(metrics) == reference["records"][epoch - 1]
  broken = os.path.join(workdir, "broken_checkpoints")
  if kind in HARMLESS:
    assert epoch in (EPOCHS, EPOCHS - 1)
    return
  assert epoch == EPOCHS - 1
  assert not glob.glob(os.path.join(ckpt_dir, TMP_GLOB))  # cleaned up
  if kind == "partial save left behind":
    assert not os.path.exists(broken)  # unfinished, not broken: no warning
    return
  # Moved aside (not deleted), with a warning naming it and the fallback.
  assert not os.path.exists(newest)
  moved = os.listdir(broken)
  assert len(moved) == 1 and moved[0].startswith(f"{EPOCHS}-")
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.WARNING and "unusable" in r.getMessage()]
  assert len(warnings) == 1, caplog.text
  assert f"epoch {EPOCHS}" in warnings[0] and "falling back" in warnings[0]
  assert "\n" not in warnings[0]


def test_run_falls_back_past_damage_and_finishes_identically(
    reference, tmp_path, caplog):
  """Newest two checkpoints damaged differently, a partial save beside them."""
  workdir = copy_run(reference, tmp_path)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  DAMAGE["array data garbled"](os.path.join(ckpt_dir, str(EPOCHS)))
  DAMAGE["metrics json garbled"](os.path.join(ckpt_dir, str(EPOCHS - 1)))
  shutil.copytree(os.path.join(ckpt_dir, "1"),
                  os.path.join(ckpt_dir, f"{EPOCHS + 1}.orbax-checkpoint-tmp-1"))
  caplog.set_level(logging.INFO, logger="mixlin_jax")

  records = train.train_and_evaluate(helpers.tiny_config(), workdir,
                                     progress=False)

  context = "Log:\n" + caplog.text[-5000:]
  assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1)), context
  moved = sorted(os.listdir(os.path.join(workdir, "broken_checkpoints")))
  assert [m.split("-")[0] for m in moved] == [str(EPOCHS - 1),
                                              str(EPOCHS)], context
  warnings = {r.getMessage().split()[3]: r.getMessage()
              for r in caplog.records if "unusable" in r.getMessage()}
  assert sorted(warnings) == [str(EPOCHS - 1), str(EPOCHS)], context
  assert "metrics file" in warnings[str(EPOCHS - 1)], context
  assert "SHA-256" in warnings[str(EPOCHS)], context
  assert f"Resuming {workdir} from epoch {EPOCHS - 2}" in caplog.text, context
  assert_same_as_reference(reference, workdir, context)


def test_checkpoint_of_another_model_stops_with_a_clear_error(reference,
                                                              tmp_path):
  """Intact but incompatible (e.g. model changed): refuse, move nothing."""
  workdir = copy_run(reference, tmp_path)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  target = jax.tree.map(np.asarray, reference["states"][1])
  target["params"]["head"]["kernel"] = np.zeros((64, 100), np.float32)
  ckpts = ckpt_lib.Checkpoints(ckpt_dir)
  try:
    with pytest.raises(ckpt_lib.CheckpointError,
                       match=r"another layout.*params/head/kernel"):
      ckpts.restore_latest_good(target)
  finally:
    ckpts.close()
  assert sorted(os.listdir(ckpt_dir)) == [str(e) for e in range(1, EPOCHS + 1)]
  assert not os.path.exists(os.path.join(workdir, "broken_checkpoints"))


def test_read_only_reader_reports_damage_without_touching_it(reference,
                                                             tmp_path):
  workdir = copy_run(reference, tmp_path)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  DAMAGE["array data garbled"](os.path.join(ckpt_dir, str(EPOCHS)))
  ckpts = ckpt_lib.Checkpoints(ckpt_dir, read_only=True)
  try:
    with pytest.raises(ckpt_lib.CheckpointIntegrityError, match="damaged"):
      ckpts.restore(EPOCHS, reference["states"][1])
    epoch, _, _ = ckpts.restore_latest_good(reference["states"][1])
    assert epoch == EPOCHS - 1
  finally:
    ckpts.close()
  assert os.path.isdir(os.path.join(ckpt_dir, str(EPOCHS)))
  # A garbled metrics file does not stop the others from being read.
  DAMAGE["metrics json garbled"](os.path.join(ckpt_dir, str(EPOCHS - 1)))
  ckpts = ckpt_lib.Checkpoints(ckpt_dir, read_only=True)
  try:
    assert ckpts.epochs() == list(range(1, EPOCHS + 1))
    with pytest.raises(ckpt_lib.CheckpointReadError, match="unreadable"):
      ckpts.restore_metrics(EPOCHS - 1)
    epoch, state, _ = ckpts.restore_latest_good(reference["states"][1])
    assert epoch == EPOCHS - 2
    helpers.assert_trees_bit_identical(state, reference["states"][epoch])
  finally:
    ckpts.close()
  assert sorted(os.listdir(ckpt_dir)) == [str(e) for e in range(1, EPOCHS + 1)]


def test_failed_restores_leave_no_noise_behind(reference, tmp_path, caplog,
                                              monkeypatch):
  """Orbax's abandoned reads are waited out inside the restore.

  A failed restore leaves TensorStore reads running on other threads; each
  used to print a page of internals (``Exception ignored in: <coroutine>``)
  whenever it was freed, at random times after the restore returned. Nothing
  may reach Python's hooks or asyncio's log afterwards, and opening a
  checkpoint read-only is not worth a warning.
  """
  workdir = copy_run(reference, tmp_path)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  DAMAGE["all array files truncated"](os.path.join(ckpt_dir, str(EPOCHS)))
  leaked = []
  monkeypatch.setattr(sys, "unraisablehook", leaked.append)
  caplog.set_level(logging.INFO)
  ckpts = ckpt_lib.Checkpoints(ckpt_dir, read_only=True)
  try:
    for attempt in range(4):
      with pytest.raises(ckpt_lib.CheckpointReadError, match="unreadable"):
        ckpts.restore(EPOCHS, reference["states"][1])
      time.sleep(0.2)  # the reads of the old code finished about now
      gc.collect()
      assert not leaked, (attempt, [repr(u.object) for u in leaked][:3])
      assert sys.unraisablehook == leaked.append  # put back as it was
  finally:
    ckpts.close()
  noise = [r.getMessage()[:200] for r in caplog.records
           if r.name == "asyncio" or "read only" in r.getMessage()]
  assert not noise


# ---------------------------------------------------------------------------
# 3. Workdir safety


def test_rerun_with_other_experiment_is_refused(reference, tmp_path):
  workdir = copy_run(reference, tmp_path)
  before = {p: os.path.getmtime(p) for p in
            glob.glob(os.path.join(workdir, "**"), recursive=True)}
  config = helpers.tiny_config(mixup__alpha=0.5, train__epochs=EPOCHS + 2)
  with pytest.raises(workdir_lib.WorkdirMismatchError) as e:
    train.train_and_evaluate(config, workdir, progress=False)
  message = str(e.value)
  assert "mixup.alpha: 1.0 -> 0.5" in message
  assert f"train.epochs: {EPOCHS} -> {EPOCHS + 2}" in message
  assert "--allow_config_change" in message
  assert "seed" not in message  # only the differing fields are listed
  after = {p: os.path.getmtime(p) for p in
           glob.glob(os.path.join(workdir, "**"), recursive=True)}
  assert after == before  # nothing written


def test_config_json_records_config_versions_and_allowed_changes(tmp_path):
  workdir = str(tmp_path / "w")
  config = helpers.tiny_config()
  workdir_lib.prepare(workdir, config)
  with open(os.path.join(workdir, workdir_lib.CONFIG_FILE)) as f:
    recorded = json.load(f)
  assert recorded["config"] == config_lib.flatten(config)
  for name in ("python", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
               "numpy", "mixlin_jax"):
    assert recorded["versions"][name], name
  assert "config_changes" not in recorded

  # Once an epoch is complete, a result-neutral field may change freely; a
  # result field needs the flag.
  with open(os.path.join(workdir, workdir_lib.METRICS_FILE), "w") as f:
    f.write(json.dumps({"epoch": 1}) + "\n")
  workdir_lib.prepare(workdir, helpers.tiny_config(train__log_every_steps=3))
  changed = helpers.tiny_config(train__learning_rate=0.1)
  with pytest.raises(workdir_lib.WorkdirMismatchError,
                     match=r"train\.learning_rate: 0\.05 -> 0\.1"):
    workdir_lib.prepare(workdir, changed)
  workdir_lib.prepare(workdir, changed, allow_config_change=True)
  with open(os.path.join(workdir, workdir_lib.CONFIG_FILE)) as f:
    recorded = json.load(f)
  assert recorded["config"]["train.learning_rate"] == 0.1
  assert recorded["config_changes"][0]["differences"] == [
      "train.learning_rate: 0.05 -> 0.1"]


def test_unreadable_config_json_is_refused(tmp_path):
  workdir = str(tmp_path / "w")
  workdir_lib.prepare(workdir, helpers.tiny_config())
  with open(os.path.join(workdir, workdir_lib.METRICS_FILE), "w") as f:
    f.write(json.dumps({"epoch": 1}) + "\n")  # an epoch was completed
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  _truncate(path)
  with pytest.raises(workdir_lib.WorkdirMismatchError, match="unreadable"):
    workdir_lib.prepare(workdir, helpers.tiny_config())
  workdir_lib.prepare(workdir, helpers.tiny_config(), allow_config_change=True)
  assert workdir_lib.read_config(workdir) == config_lib.flatten(
      helpers.tiny_config())


def test_run_py_refuses_other_experiment_with_status_2(reference, tmp_path,
                                                       jax_cache):
  workdir = copy_run(reference, tmp_path)
  out = helpers.run_py(
      helpers.tiny_flags() + [f"--workdir={workdir}", "--progress=false",
                              "--config.mixup.num_points=2"],
      env=helpers.subprocess_env(jax_cache=jax_cache), timeout=180)
  assert out.returncode == 2, out.stderr[-3000:]
  assert "holds a different experiment" in out.stderr
  assert "mixup.num_points: 3 -> 2" in out.stderr
  assert "Traceback" not in out.stderr


# ---------------------------------------------------------------------------
# 4. Non-finite training


def test_divergence_stops_with_epoch_step_and_last_good_checkpoint(
    reference, tmp_path):
  workdir = copy_run(reference, tmp_path)
  for epoch in range(3, EPOCHS + 1):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(epoch)))
  config = helpers.tiny_config(train__learning_rate=1e30)
  with pytest.raises(train.NonFiniteError) as e:
    train.train_and_evaluate(config, workdir, progress=False,
                             allow_config_change=True)
  message = str(e.value)
  assert "in epoch 3 at step" in message
  assert "last good checkpoint: epoch 2" in message
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
  assert [r["epoch"] for r in helpers.read_records(workdir)] == [1, 2]


def _visible_line(text):
  """What a terminal shows on the cursor's line after ``text`` (\r rewinds)."""
  line = ""
  for segment in text.rsplit("\n", 1)[-1].split("\r"):
    line = segment + line[len(segment):]
  return line


def test_first_epoch_divergence_clears_the_bar_and_a_retry_may_follow(
    tmp_path, capsys, jax_cache):
  """No checkpoint to name; the bar is gone; the lower rate reruns in place."""
  del jax_cache
  workdir = str(tmp_path / "w")
  with pytest.raises(train.NonFiniteError) as e:
    train.train_and_evaluate(helpers.tiny_config(train__learning_rate=1e6),
                             workdir, progress=True)
  message = str(e.value)
  assert "in epoch 1 at step" in message
  assert "no checkpoint was saved" in message and "None" not in message
  err = capsys.readouterr().err
  assert "epoch 1/" in err  # the bar was drawn ...
  assert not _visible_line(err).strip()  # ... and cleared before the error

  # The obvious retry: same workdir, lower learning rate. With the bar off
  # the epoch line still prints.
  records = train.train_and_evaluate(helpers.tiny_config(train__epochs=1),
                                     workdir, progress=False)
  assert [r["epoch"] for r in records] == [1]
  captured = capsys.readouterr()
  assert [l for l in captured.out.splitlines() if l.startswith("epoch ")] == [
      train.format_epoch_summary(records[0])]
  assert "\r" not in captured.out + captured.err


def test_non_finite_state_is_never_saved(reference, tmp_path):
  ckpt_dir = str(tmp_path / "checkpoints")
  state = jax.tree.map(np.array, reference["states"][1])
  ckpts = ckpt_lib.Checkpoints(ckpt_dir)
  try:
    ckpts.save(1, state, {"epoch": 1})
    ckpts.wait()
    state["ema_params"]["head"]["bias"][3] = np.inf
    with pytest.raises(ckpt_lib.NonFiniteStateError,
                       match=r"epoch 2: ema_params/head/bias.*last good "
                       r"checkpoint is epoch 1"):
      ckpts.save(2, state, {"epoch": 2})
  finally:
    ckpts.close()
  assert os.listdir(ckpt_dir) == ["1"]


# ---------------------------------------------------------------------------
# 5. Bad command line


@pytest.mark.parametrize("override, message", [
    ("--config.mixup.alpha=-1",
     "error: config.mixup.alpha = -1.0 is not allowed: a number > 0"),
    ("--config.train.epoch=3",  # misspelt field (it is `epochs`)
     "error: a --config override names a field that does not exist: 'epoch' "
     'Did you mean "epochs" instead of "epoch"?'),
])
def test_run_py_bad_override_exits_2_with_one_line_and_writes_nothing(
    tmp_path, jax_cache, override, message):
  workdir = tmp_path / "never"
  out = helpers.run_py(
      helpers.tiny_flags() + [f"--workdir={workdir}", "--progress=false",
                              override],
      env=helpers.subprocess_env(jax_cache=jax_cache), timeout=180)
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [l for l in out.stderr.splitlines() if "error" in l.lower()]
  assert errors == [message], out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  assert not workdir.exists()
  assert not os.listdir(tmp_path)


def test_run_py_unknown_variant_exits_2_with_one_line(tmp_path, jax_cache):
  workdir = tmp_path / "never"
  out = helpers.run_py(
      [f"--config={helpers.DEFAULT_CONFIG}:smoke,bogus",
       f"--workdir={workdir}", "--progress=false"],
      env=helpers.subprocess_env(jax_cache=jax_cache), timeout=180)
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [l for l in out.stderr.splitlines() if "error" in l.lower()]
  assert errors == ["error: --config variant = 'bogus' is not allowed: one of "
                    f"{config_lib.VARIANTS}"], out.stderr
  assert not workdir.exists()
