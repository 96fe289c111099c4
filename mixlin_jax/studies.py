"""A study: every (regime, seed) of one config, each an ordinary run.

Layout of a study folder::

    <out>/runs/<regime>_seed<seed>/   an ordinary run.py workdir (config.json,
                                      metrics.jsonl, checkpoints/)
    <out>/tables/, <out>/figures/,    the aggregate (mixlin_jax.analysis.study)
    <out>/claims.md, claims.json

Each run is the command :func:`run_command` returns, executed as a
subprocess: the very command ``--print_commands`` prints for a cluster, so a
study run here and one run as a Slurm job array write identical workdirs.
A run is *finished* when its ``metrics.jsonl`` holds every epoch of its
recorded config; an unfinished one is resumed by rerunning its command.

This module plans and launches; it never imports the training code (a
subprocess does the training), so it is cheap to import in a notebook.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

from mixlin_jax import config as config_lib
from mixlin_jax import workdir as workdir_lib

RUNS_DIR = "runs"
LOG_FILE = "log.txt"
_RUN_NAME = re.compile(r"^(?P<regime>[a-z]+\d*)_seed(?P<seed>\d+)$")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One (regime, seed) of a study."""
  regime: str
  seed: int

  @property
  def name(self) -> str:
    return f"{self.regime}_seed{self.seed}"


def parse_run_name(name: str) -> RunSpec | None:
  """``'mix3_seed2'`` -> RunSpec('mix3', 2); None for other folder names."""
  m = _RUN_NAME.match(name)
  return RunSpec(m["regime"], int(m["seed"])) if m else None


def plan(regimes: Sequence[str], seeds: Sequence[int]) -> list[RunSpec]:
  """Seed-major order: every regime of seed 0 first, so a study stopped
  early still holds complete, paired seeds."""
  for regime in regimes:
    config_lib.check_regime_name(regime)
  return [RunSpec(r, s) for s in seeds for r in regimes]


def run_workdir(out: str, spec: RunSpec) -> str:
  return os.path.join(out, RUNS_DIR, spec.name)


def run_command(config_path: str, spec: RunSpec, out: str,
                overrides: Sequence[str] = (), *,
                python: str = "python") -> list[str]:
  """The ``run.py`` command of one run (``config_path`` may carry variants).

  The regime is appended to the config's variants and the seed is an
  override, so the run's config is exactly ``get_config(variants + regime)``
  with the user's overrides and ``seed`` applied.
  """
  path, _, variants = config_path.partition(":")
  variants = ",".join(filter(None, [variants, spec.regime]))
  script = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "experiments", "run.py")
  if not os.path.exists(script):  # installed without the experiments folder
    script = "experiments/run.py"
  return [python, script, f"--config={path}:{variants}",
          *overrides, f"--config.seed={spec.seed}",
          f"--workdir={run_workdir(out, spec)}"]


def format_command(cmd: Sequence[str]) -> str:
  return " ".join(shlex.quote(c) for c in cmd)


@dataclasses.dataclass
class RunStatus:
  spec: RunSpec
  workdir: str
  epochs_done: int
  epochs_total: int | None  # None: no config.json yet

  @property
  def finished(self) -> bool:
    return self.epochs_total is not None and self.epochs_done >= self.epochs_total

  @property
  def state(self) -> str:
    if self.finished:
      return "finished"
    if self.epochs_total is None:
      return "missing"
    return f"incomplete ({self.epochs_done}/{self.epochs_total} epochs)"


def run_status(out: str, spec: RunSpec) -> RunStatus:
  workdir = run_workdir(out, spec)
  config = workdir_lib.read_config(workdir)
  if config is None:
    return RunStatus(spec, workdir, 0, None)
  records = workdir_lib.read_metrics(workdir)
  done = max((r["epoch"] for r in records), default=0)
  return RunStatus(spec, workdir, done, int(config["train.epochs"]))


def existing_runs(out: str) -> list[RunSpec]:
  """Every run folder under ``<out>/runs`` (for aggregating what is there)."""
  folder = os.path.join(out, RUNS_DIR)
  if not os.path.isdir(folder):
    return []
  specs = [parse_run_name(n) for n in sorted(os.listdir(folder))]
  return [s for s in specs if s is not None]


def job_slots(jobs: int, cpus: Sequence[int] | None = None) -> list[dict]:
  """How ``jobs`` runs at once share the machine: one dict per slot.

  Each slot has ``cpus`` (the cores its run is pinned to: the machine's
  cores split into ``jobs`` equal parts, so runs do not fight over them;
  None for one job, or more jobs than cores) and ``env`` (variables set
  for its run: ``XLA_PYTHON_CLIENT_MEM_FRACTION`` so that ``jobs`` runs fit
  on one GPU together, 80% of its memory shared out; ignored on CPU).
  """
  if jobs < 1:
    raise ValueError(f"jobs: expected a positive number, got {jobs}")
  if jobs == 1:
    return [{"cpus": None, "env": {}}]
  if cpus is None:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(
        os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
  per_job = len(cpus) // jobs
  env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.8 / jobs:.3f}"}
  return [{"cpus": (tuple(cpus[i * per_job:(i + 1) * per_job])
                    if per_job else None),
           "env": env} for i in range(jobs)]


@dataclasses.dataclass
class _Running:
  status: RunStatus
  proc: subprocess.Popen
  log_file: Any
  slot: int
  start: float


def execute(config_path: str, specs: Sequence[RunSpec], out: str,
            overrides: Sequence[str] = (), *, jobs: int = 1,
            log: Callable[[str], None] = print,
            poll_seconds: float = 0.5) -> list[RunStatus]:
  """Runs every unfinished run, up to ``jobs`` at a time; returns the final statuses.

  Finished runs are skipped; interrupted ones resume (``run.py`` restarts
  from the newest good checkpoint). Each run's output goes to
  ``<workdir>/log.txt``; this prints one line when a run starts and one
  when it ends, counting finished runs, with the estimated time left from
  the runs done so far in this call. Runs start in plan order (seed-major),
  each pinned to its share of the cores (:func:`job_slots`). A failed run
  stops new starts; the runs still going are let finish (so nothing is
  lost), then :class:`StudyRunError` names the failed run's log. Ctrl-C is
  passed to every running run (each saves a checkpoint and exits), then
  re-raised.
  """
  statuses = [run_status(out, s) for s in specs]
  todo = [st for st in statuses if not st.finished]
  log(f"study {out}: {len(specs)} runs, {len(specs) - len(todo)} finished, "
      f"{len(todo)} to run" + (f", {jobs} at a time" if jobs > 1 else ""))
  slots = job_slots(jobs)
  free = list(range(len(slots)))
  waiting = list(todo)
  running: list[_Running] = []
  per_epoch: dict[str, list[float]] = {}
  failures: list[str] = []
  done = 0
  try:
    while waiting or running:
      while waiting and free and not failures:
        st = waiting.pop(0)
        slot = free.pop(0)
        running.append(_start(config_path, st, out, overrides, slots[slot],
                              slot))
        log(f"[{done + len(running)}/{len(todo)}] {st.spec.name}: {st.state} "
            f"-> running" + (f" (slot {slot + 1})" if jobs > 1 else ""))
      time.sleep(poll_seconds if running else 0)
      for r in [r for r in running if r.proc.poll() is not None]:
        running.remove(r)
        free.append(r.slot)
        free.sort()
        r.log_file.close()
        seconds = time.time() - r.start
        new = run_status(out, r.status.spec)
        if r.proc.returncode != 0 or not new.finished:
          failures.append(_failure(r, new))
          log(f"{r.status.spec.name}: failed (exit {r.proc.returncode})"
              + ("; waiting for the runs still going" if running else ""))
          continue
        done += 1
        epochs = max(new.epochs_done - r.status.epochs_done, 1)
        per_epoch.setdefault(r.status.spec.regime, []).append(seconds / epochs)
        left = _seconds_left(waiting + [x.status for x in running], per_epoch,
                             new.epochs_total) / max(jobs, 1)
        log(f"[{done}/{len(todo)} finished] {r.status.spec.name}: done in "
            f"{seconds / 60:.1f} min"
            + (f"; about {left / 60:.0f} min left" if left else ""))
  except KeyboardInterrupt:
    _stop(running)
    raise
  if failures:
    raise StudyRunError("\n".join(failures))
  return [run_status(out, s) for s in specs]


def _start(config_path: str, st: RunStatus, out: str,
           overrides: Sequence[str], slot: dict, index: int) -> _Running:
  os.makedirs(st.workdir, exist_ok=True)
  cmd = run_command(config_path, st.spec, out, overrides,
                    python=sys.executable)
  log_file = open(os.path.join(st.workdir, LOG_FILE), "a")
  log_file.write(f"$ {format_command(cmd)}\n")
  log_file.flush()
  cpus = slot["cpus"]
  proc = subprocess.Popen(
      cmd, stdout=log_file, stderr=subprocess.STDOUT,
      env=dict(os.environ, PYTHONUNBUFFERED="1", **slot["env"]),
      preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
  return _Running(st, proc, log_file, index, time.time())


def _failure(r: _Running, new: RunStatus) -> str:
  path = os.path.join(r.status.workdir, LOG_FILE)
  with open(path) as f:
    tail = "".join(f.readlines()[-8:])
  state = "" if r.proc.returncode else f", {new.state}"
  return (f"run {r.status.spec.name} failed (exit {r.proc.returncode}{state}); "
          f"its log {path} ends with:\n{tail}")


def _stop(running: Sequence[_Running], grace: float = 10.0,
          timeout: float = 120.0) -> None:
  """After Ctrl-C: lets every run save its checkpoint and exit.

  Runs share the study's process group, so a Ctrl-C at the terminal has
  reached each of them already (a second SIGINT would cut its checkpoint
  short): they get ``grace`` seconds to exit on their own. One still going
  then (the study alone was signalled) gets a SIGINT; one not out within
  ``timeout`` seconds more is killed (it resumes from its previous
  checkpoint).
  """
  def wait_all(seconds):
    deadline = time.time() + seconds
    for r in running:
      try:
        r.proc.wait(timeout=max(deadline - time.time(), 0.01))
      except subprocess.TimeoutExpired:
        pass
  wait_all(grace)
  for r in running:
    if r.proc.poll() is None:
      r.proc.send_signal(signal.SIGINT)
  wait_all(timeout)
  for r in running:
    if r.proc.poll() is None:
      r.proc.kill()
      r.proc.wait()
    r.log_file.close()


def _seconds_left(rest: Sequence[RunStatus],
                  per_epoch: dict[str, list[float]],
                  epochs_per_run: int) -> float:
  """Estimated seconds for ``rest``: each regime's mean seconds per epoch
  so far (the overall mean for a regime not seen yet)."""
  if not rest:
    return 0.0
  everything = [v for vs in per_epoch.values() for v in vs]
  overall = sum(everything) / len(everything)
  total = 0.0
  for st in rest:
    rates = per_epoch.get(st.spec.regime)
    rate = sum(rates) / len(rates) if rates else overall
    total += rate * ((st.epochs_total or epochs_per_run) - st.epochs_done)
  return total


class StudyRunError(RuntimeError):
  """A run of the study exited with an error (its workdir is kept)."""
