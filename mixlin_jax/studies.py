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
import subprocess
import sys
import time
from typing import Callable, Sequence

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


def execute(config_path: str, specs: Sequence[RunSpec], out: str,
            overrides: Sequence[str] = (), *,
            log: Callable[[str], None] = print) -> list[RunStatus]:
  """Runs every unfinished run in order; returns the final statuses.

  Finished runs are skipped; interrupted ones resume (``run.py`` restarts
  from the newest good checkpoint). Each run's output goes to
  ``<workdir>/log.txt``; this prints one line per run, with the estimated
  time left from the runs done so far in this call. A failed run stops the
  study with its last lines (its workdir is kept and resumes next time).
  """
  statuses = [run_status(out, s) for s in specs]
  todo = [st for st in statuses if not st.finished]
  log(f"study {out}: {len(specs)} runs, {len(specs) - len(todo)} finished, "
      f"{len(todo)} to run")
  per_epoch: dict[str, list[float]] = {}
  for i, st in enumerate(todo, start=1):
    os.makedirs(st.workdir, exist_ok=True)
    cmd = run_command(config_path, st.spec, out, overrides,
                      python=sys.executable)
    log(f"[{i}/{len(todo)}] {st.spec.name}: {st.state} -> running")
    start = time.time()
    with open(os.path.join(st.workdir, LOG_FILE), "a") as f:
      f.write(f"$ {format_command(cmd)}\n")
      f.flush()
      proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    seconds = time.time() - start
    new = run_status(out, st.spec)
    if proc.returncode != 0 or not new.finished:
      with open(os.path.join(st.workdir, LOG_FILE)) as f:
        tail = "".join(f.readlines()[-8:])
      raise StudyRunError(
          f"run {st.spec.name} failed (exit {proc.returncode}); its log "
          f"{os.path.join(st.workdir, LOG_FILE)} ends with:\n{tail}")
    epochs = max(new.epochs_done - st.epochs_done, 1)
    per_epoch.setdefault(st.spec.regime, []).append(seconds / epochs)
    left = _seconds_left(todo[i:], per_epoch, new.epochs_total)
    log(f"[{i}/{len(todo)}] {st.spec.name}: done in {seconds / 60:.1f} min"
        + (f"; about {left / 60:.0f} min left" if left else ""))
  return [run_status(out, s) for s in specs]


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
