"""The entry points as a user (or a batch job) meets them: exit statuses,
one-line errors, help, clean logs, Ctrl-C.

Every check runs the real scripts as subprocesses. Those that stop before
any JAX work (flag and config-file errors, help) take well under a second
each; the few that train use the tiny config of ``helpers`` for 2 epochs.
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time


import helpers
from mixlin_jax import checkpoints as ckpt_lib
from mixlin_jax import config as config_lib

EXPERIMENTS = os.path.join(helpers.ROOT, "experiments")
ANALYZE_PY = os.path.join(EXPERIMENTS, "analyze.py")
COMPARE_PY = os.path.join(EXPERIMENTS, "compare.py")
# absl's detailed log prefix, e.g. "I1129 06:06:36.236274 1396872 data.py:190]".
ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]",
                         re.M)


def _run(script, args, *, env=None, timeout=120, **kwargs):
  return subprocess.run([sys.executable, script] + list(args),
                        env=env or helpers.subprocess_env(one_device=True),
                        capture_output=True, text=True, timeout=timeout,
                        cwd=helpers.ROOT, **kwargs)


def _assert_one_error_line(proc, *fragments, status=2):
  context = (f"exit {proc.returncode}\nstdout:\n{proc.stdout}\n"
             f"stderr:\n{proc.stderr}")
  assert proc.returncode == status, context
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), context
  for fragment in fragments:
    assert fragment in lines[0], context


# ---------------------------------------------------------------------------
# Errors before any work: one line, status 2


def test_config_file_problems_name_the_file_and_the_problem(tmp_path):
  files = {
      "syntax.py": "def get_config(arg=None)\n  return None\n",
      "no_get_config.py": "X = 1\n",
      "returns_none.py": "def get_config(arg=None):\n  pass\n",
      "raises.py": "import no_such_module_here\n",
  }
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  cases = [
      (tmp_path / "nope.py", ["nope.py", "does not exist"]),
      (tmp_path, [str(tmp_path), "is not a file"]),
      (tmp_path / "syntax.py", ["syntax.py", "syntax error at line 1"]),
      (tmp_path / "no_get_config.py", ["no_get_config.py",
                                       "defines no get_config()"]),
      (tmp_path / "returns_none.py", ["returns_none.py",
                                      "get_config() returned None"]),
      (tmp_path / "raises.py", ["raises.py", "ModuleNotFoundError"]),
      (f"{helpers.DEFAULT_CONFIG}:mix1", ["'mix1'", "K an integer >= 2"]),
  ]
  for config, fragments in cases:
    workdir = tmp_path / "never"
    proc = _run(helpers.RUN_PY, [f"--config={config}", f"--workdir={workdir}"])
    _assert_one_error_line(proc, *fragments)
    assert not workdir.exists()


def test_usage_errors_of_every_entry_point(tmp_path):
  cases = [
      (helpers.RUN_PY, [], ["--config is required"]),
      (helpers.RUN_PY, [f"--config={helpers.DEFAULT_CONFIG}", "extra"],
       ["unexpected arguments: extra"]),
      (helpers.RUN_PY, ["--no_such_flag"], ["no_such_flag"]),
      (ANALYZE_PY, [f"--workdir={tmp_path}", "--epochs=7,abc"],
       ["--epochs must be comma-separated integers, got 7,abc"]),
      (ANALYZE_PY, [], ["--workdir is required"]),
      (ANALYZE_PY, [f"--workdir={tmp_path}", "--split=val"], ["--split"]),
      (COMPARE_PY, [], ["give one or more workdirs"]),
      (COMPARE_PY, [str(tmp_path / "nope")], ["nope"]),  # analysis's error
  ]
  for script, args, fragments in cases:
    _assert_one_error_line(_run(script, args), *fragments)


def test_help_exits_0_and_says_where_the_config_is_documented():
  proc = _run(helpers.RUN_PY, ["--help"])
  assert proc.returncode == 0, proc.stderr
  text = " ".join(proc.stdout.split())
  assert config_lib.VARIANTS in text
  assert "base_config() of mixlin_jax/config.py" in text
  assert "--config.SECTION.FIELD=VALUE" in text and "--workdir" in text
  for script in (ANALYZE_PY, COMPARE_PY):
    proc = _run(script, ["--help"])
    assert proc.returncode == 0 and "Exit status" in proc.stdout, proc.stderr


_LOGGING_PROBE = textwrap.dedent("""
    import logging
    from absl import app
    from mixlin_jax import cli

    def main(argv):
      cli.setup_logging()
      log = logging.getLogger("mixlin_jax.probe")
      log.info("a note")
      log.warning("a warning")
      logging.getLogger("some_library").info("library chatter")

    app.run(main)
""")


def test_plain_log_lines_unless_verbosity_asks_for_details(tmp_path):
  probe = tmp_path / "probe.py"
  probe.write_text(_LOGGING_PROBE)
  plain = _run(str(probe), [])
  assert plain.returncode == 0, plain.stderr
  assert plain.stderr.splitlines() == ["a note", "warning: a warning"]
  detailed = _run(str(probe), ["--verbosity=0"])
  assert detailed.returncode == 0, detailed.stderr
  assert len(ABSL_PREFIX.findall(detailed.stderr)) == 3, detailed.stderr
  assert "library chatter" in detailed.stderr
  # A log file gets the details; the terminal keeps the plain lines.
  logged = _run(str(probe), [f"--log_dir={tmp_path / 'logs'}"])
  assert logged.returncode == 0, logged.stderr
  assert logged.stderr.splitlines() == ["a note", "warning: a warning"]
  (log_file,) = glob.glob(str(tmp_path / "logs" / "*.log.INFO.*"))
  with open(log_file) as f:
    assert len(ABSL_PREFIX.findall(f.read())) == 2


# ---------------------------------------------------------------------------
# A batch job's log, and analysis of a damaged run


def test_batch_log_is_one_line_per_epoch_and_analysis_only_warns(tmp_path):
  """``run.py ... > log 2>&1`` (bar on by default), then analyze.py."""
  workdir = str(tmp_path / "run")
  log_path = tmp_path / "log"
  with open(log_path, "w") as log:
    proc = subprocess.run(
        [sys.executable, helpers.RUN_PY] + helpers.tiny_flags(
            train__epochs=2) + [f"--workdir={workdir}"],
        env=helpers.subprocess_env(one_device=True), stdout=log,
        stderr=subprocess.STDOUT, timeout=300, cwd=helpers.ROOT)
  raw = log_path.read_bytes()  # as bytes: text mode would turn \r into \n
  text = raw.decode()
  assert proc.returncode == 0, text
  assert b"\r" not in raw  # no progress-bar frames in a file
  assert not ABSL_PREFIX.search(text), text
  lines = text.splitlines()
  assert [l.split(":")[0] for l in lines if l.startswith("epoch ")] == [
      "epoch 1", "epoch 2"], text
  assert lines[-1].startswith("Done: 2 epochs"), text
  assert len(lines) == 4, text  # + "Loaded digits ..."

  # The newest checkpoint truncated: analysis skips it with one warning and
  # prints nothing else on stderr (no Orbax internals, no read-only notice).
  state = os.path.join(workdir, "checkpoints", "2", "state")
  largest = max((p for p in glob.glob(state + "/**", recursive=True)
                 if os.path.isfile(p)), key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)
  proc = _run(ANALYZE_PY, [f"--workdir={workdir}", f"--out={tmp_path / 'a'}"],
              timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "Skipped epochs (see warnings): 2" in proc.stdout
  warnings = [l for l in proc.stderr.splitlines() if l.startswith("warning: ")]
  assert len(warnings) == 1, proc.stderr
  assert "checkpoint of epoch 2 is unreadable and was skipped" in warnings[0]
  others = [l for l in proc.stderr.splitlines()
            if l not in warnings and not l.startswith("Loaded digits")]
  assert not others, proc.stderr


# ---------------------------------------------------------------------------
# Ctrl-C


def _sigint_as_at_a_terminal():
  # A suite started in the background by a shell without job control (`cmd
  # &` in a script) inherits SIGINT ignored, and so would the run: Ctrl-C
  # is tested as a user at a terminal sends it.
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_after_first_epoch(tmp_path, *, pause_s=0.0, **env):
  """Runs the tiny config for up to 200 epochs, sends SIGINT ``pause_s``
  after the first epoch line, and returns ``(status, stderr, workdir)``."""
  workdir = str(tmp_path / "run")
  out_path, err_path = tmp_path / "out", tmp_path / "err"
  with open(out_path, "w") as out, open(err_path, "w") as err:
    proc = subprocess.Popen(
        [sys.executable, helpers.RUN_PY] + helpers.tiny_flags(
            train__epochs=200) + [f"--workdir={workdir}"],
        env=helpers.subprocess_env(one_device=True, **env), stdout=out,
        stderr=err, cwd=helpers.ROOT, preexec_fn=_sigint_as_at_a_terminal)
  try:
    deadline = time.monotonic() + 300
    while "epoch 1:" not in out_path.read_text():
      assert proc.poll() is None, err_path.read_text()
      assert time.monotonic() < deadline, "no epoch line in time"
      time.sleep(0.05)
    time.sleep(pause_s)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  return proc.returncode, err_path.read_text(), workdir


def _assert_interrupted_with_the_save_finished(status, stderr, workdir, *,
                                               warnings_allowed=False):
  assert status == 130, stderr
  lines = [l for l in stderr.strip().splitlines()
           if not (warnings_allowed and l.startswith("warning: "))]
  assert lines[-1].startswith(
      "interrupted; rerun the same command to resume from epoch "), stderr
  assert "Traceback" not in stderr and len(lines) == 2, stderr  # + "Loaded"
  epoch = int(lines[-1].rsplit(" ", 1)[-1])
  # The save in flight was finished: that epoch is complete, nothing is
  # left half-written.
  folder = os.path.join(workdir, "checkpoints")
  assert epoch >= 1 and max(int(n) for n in os.listdir(folder)) == epoch
  assert not [n for n in os.listdir(folder) if not n.isdigit()]


def test_ctrl_c_prints_one_line_finishes_the_save_and_exits_130(tmp_path):
  _assert_interrupted_with_the_save_finished(
      *_interrupt_after_first_epoch(tmp_path))


def test_ctrl_c_while_a_save_waits_for_the_previous_one(tmp_path):
  # Epoch 1's save pauses 3 s before its commit, so one second after its
  # line the run is inside Orbax, waiting for it before saving epoch 2.
  # There Orbax logged a traceback and forgot epoch 1 (the run said "no
  # epoch saved" with epoch 1 on disk): the interrupt now waits for Orbax.
  _assert_interrupted_with_the_save_finished(
      *_interrupt_after_first_epoch(
          tmp_path, pause_s=1.0, **{ckpt_lib.COMMIT_DELAY_ENV: "3"}),
      warnings_allowed=True)  # the hook's pause, Orbax's slow-save notice
