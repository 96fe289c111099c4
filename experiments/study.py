r"""Runs every (regime, seed) of one config, then aggregates them with statistics and verdicts.

    python experiments/study.py --config=configs/default.py \
        --regimes=erm,supmix2,mix2,mix3 --seeds=0,1,2,3,4 --out=docs/studies/digits
    python experiments/study.py --config=configs/cifar10_cpu_study.py \
        --regimes=erm,supmix2,mix2,mix3 --seeds=0,1,2 --out=docs/studies/cifar10_cpu
    # a cluster: one run.py command per run (a Slurm array, any batch system) ...
    python experiments/study.py --config=... --regimes=... --seeds=... --out=... --print_commands
    # ... then aggregate whatever has finished
    python experiments/study.py --out=docs/studies/cifar10_cpu --aggregate_only

Each run is an ordinary ``run.py`` subprocess writing to
``<out>/runs/<regime>_seed<seed>/``, one after another or ``--jobs=N`` at a
time; finished runs are skipped and
interrupted ones resume, so rerunning the same command after a kill picks up
where it stopped. ``--config.FIELD=VALUE`` overrides pass through to every
run. The aggregate (tables, figures, claims.md) is written to ``<out>``;
see ``mixlin_jax.analysis.study`` for the statistics and the claims' tests.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from mixlin_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/X.py[:variants]).",
    lock_config=True)
_REGIMES = flags.DEFINE_list(
    "regimes", ["erm", "supmix2", "mix2", "mix3"],
    "Regimes to run (erm, supmixK, mixK); the first is the baseline of the "
    "paired differences.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
_OUT = flags.DEFINE_string("out", None, "Study folder.")
_PRINT = flags.DEFINE_bool(
    "print_commands", False,
    "Print one run.py command per unfinished run and exit (for clusters).")
_AGGREGATE_ONLY = flags.DEFINE_bool(
    "aggregate_only", False,
    "Run nothing: aggregate the finished runs under --out, naming the "
    "missing and incomplete ones.")
_JOBS = flags.DEFINE_integer(
    "jobs", 1,
    "Runs at the same time on this machine, each pinned to its share of the "
    "cores and, on a GPU, to 80%/N of its memory (--print_commands is the "
    "way to a cluster).", lower_bound=1)
_COMPILATION_CACHE = flags.DEFINE_bool(
    "compilation_cache", True,
    "Keep compiled programs in JAX's persistent cache "
    "(~/.cache/mixlin_jax/jax, or $JAX_COMPILATION_CACHE_DIR) so that the "
    "next run skips compiling them (passed on to every run); "
    "--nocompilation_cache is MIXLIN_JAX_CACHE=off.")
flags.mark_flags_as_required(["out"])


_EPILOG = """\
Config fields and variants: see `python experiments/run.py --help`.
Exit status: 0 done; 2 an error (one line starting 'error:' on stderr, e.g.
a run that failed: its log is named); 130 interrupted (rerun the same
command: finished runs are skipped, the interrupted one resumes).
"""


def _overrides(argv) -> list[str]:
  """The ``--config.FIELD=VALUE`` arguments, passed on to every run."""
  out = []
  for arg in argv:
    if arg.startswith("--config."):
      if "=" not in arg:
        raise cli.UsageError(
            f"{arg}: write config overrides as --config.FIELD=VALUE")
      out.append(arg)
  return out


def main(argv):
  cli.setup_logging()
  with cli.user_errors_reported():
    cli.reject_extra_arguments(argv)
    cli.apply_compilation_cache_flag(_COMPILATION_CACHE.value)
    _main()


def _main():
  from mixlin_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from mixlin_jax import studies  # pylint: disable=import-outside-toplevel
  from mixlin_jax.analysis import study as study_lib  # pylint: disable=import-outside-toplevel
  out = _OUT.value
  if not _AGGREGATE_ONLY.value:
    if _CONFIG.value is None:
      raise config_lib.ConfigError("--config", None,
                                   "a config file (needed unless --aggregate_only)")
    seeds = cli.parse_int_list("seeds", _SEEDS.value)
    specs = studies.plan(_REGIMES.value, seeds)
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    overrides = _overrides(sys.argv[1:])
    # Every run's config is checked before anything runs.
    for spec in specs:
      c = _CONFIG.value.copy_and_resolve_references()
      config_lib.apply_regime(c, spec.regime)
      c.seed = spec.seed
      config_lib.validate(c, workdir=studies.run_workdir(out, spec))
    if _PRINT.value:
      for spec in specs:
        if not studies.run_status(out, spec).finished:
          print(studies.format_command(
              studies.run_command(config_path, spec, out, overrides)))
      return
    studies.execute(config_path, specs, out, overrides, jobs=_JOBS.value)
    study_lib.aggregate_and_report(out, baseline=_REGIMES.value[0],
                                   regimes=_REGIMES.value, seeds=seeds)
    return
  # --aggregate_only: the grid is what the flags name, else what is there.
  regimes = _REGIMES.value if flags.FLAGS["regimes"].present else None
  seeds = (cli.parse_int_list("seeds", _SEEDS.value)
           if flags.FLAGS["seeds"].present else None)
  study_lib.aggregate_and_report(out, baseline=regimes[0] if regimes else None,
                                 regimes=regimes, seeds=seeds)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(config_flag="config",
                                              epilog=_EPILOG))
