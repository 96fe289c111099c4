r"""Benchmarks the real train step and the linearity metrics; prints a table, writes JSON.

    python experiments/benchmark.py --tiny                       # seconds, CPU smoke
    python experiments/benchmark.py --tiny --regimes=erm --epoch_tuples=512 \
        --post_hoc_tuples=10000 --linearity_batch=1000   # metric vs its floor
    python experiments/benchmark.py --models=preact_resnet18,wrn28_2 \
        --torch_reference=../shared/bench/torch_resnet18_mixup.py --out=bench.json
    python experiments/benchmark.py --first_call   # measure()'s first call vs its compile floor

Logic lives in ``mixlin_jax.benchmark``; see its docstring for what is timed.
"""

import json

from absl import app
from absl import flags

from mixlin_jax import cli

_TINY = flags.DEFINE_bool("tiny", False, "Seconds-long CPU variant (small CNN, 8x8 images).")
_MODELS = flags.DEFINE_list("models", None, "Models (default preact_resnet18).")
_REGIMES = flags.DEFINE_list("regimes", None, "Regimes among erm,supmix2,mix2,mix3.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Labelled (and unlabelled) batch size.")
_STEPS = flags.DEFINE_integer("steps", None, "Timed steps per regime.")
_WARMUP = flags.DEFINE_integer("warmup", None, "Untimed steps after compilation.")
_DTYPE = flags.DEFINE_enum("compute_dtype", None, ["auto", "float32", "bfloat16"],
                           "Train-step compute dtype.")
_POST_HOC = flags.DEFINE_integer("post_hoc_tuples", None, "Tuples of the post-hoc metric.")
_EPOCH_TUPLES = flags.DEFINE_integer("epoch_tuples", None, "Tuples of the per-epoch metric.")
_LIN_BATCH = flags.DEFINE_integer("linearity_batch", None, "Tuples per linearity batch.")
_LIN_REPEATS = flags.DEFINE_integer(
    "linearity_repeats", None, "Alternating timed runs of the metric and its forward-pass floor.")
_LIN_DTYPES = flags.DEFINE_list("linearity_dtypes", None, "Linearity compute dtypes.")
_IMAGE_SHAPE = flags.DEFINE_list("image_shape", None, "Synthetic image shape, e.g. 32,32,3.")
_TORCH = flags.DEFINE_string("torch_reference", None,
                             "Path of the PyTorch reference script to run in the same call.")
_FIRST_CALL = flags.DEFINE_bool(
    "first_call", False,
    "Only the first-call row: linearity.measure's first call on a small 10-layer model against "
    "the compile of its forward (capture_intermediates) plus JVP, each in a fresh process.")
_FIRST_CALL_REPEATS = flags.DEFINE_integer(
    "first_call_repeats", 3, "Fresh processes per quantity of the first-call row (median kept).")
_OUT = flags.DEFINE_string("out", "benchmark.json", "Where to write the JSON report.")


def main(argv):
  cli.setup_logging()
  with cli.user_errors_reported():
    cli.reject_extra_arguments(argv)
    _main()


def _main():
  from mixlin_jax import benchmark  # pylint: disable=import-outside-toplevel
  if _FIRST_CALL.value:  # fresh processes without the persistent cache
    row = benchmark.time_first_call(_FIRST_CALL_REPEATS.value)
    print(benchmark.format_first_call(row))
    with open(_OUT.value, "w") as f:
      json.dump({"first_call": row}, f, indent=2)
    print(f"\nWrote {_OUT.value}")
    return
  from mixlin_jax import jax_cache  # pylint: disable=import-outside-toplevel
  jax_cache.enable()  # compile time is not what the benchmark measures
  settings = benchmark.BenchSettings.tiny() if _TINY.value else benchmark.BenchSettings()
  for flag, field in ((_MODELS, "models"), (_REGIMES, "regimes"), (_BATCH, "batch_size"),
                      (_STEPS, "steps"), (_WARMUP, "warmup"), (_DTYPE, "compute_dtype"),
                      (_POST_HOC, "post_hoc_tuples"), (_EPOCH_TUPLES, "epoch_tuples"),
                      (_LIN_BATCH, "linearity_batch"), (_LIN_REPEATS, "linearity_repeats"),
                      (_LIN_DTYPES, "linearity_dtypes")):
    if flag.value is not None:
      setattr(settings, field, flag.value)
  if _IMAGE_SHAPE.value is not None:
    settings.image_shape = tuple(int(d) for d in _IMAGE_SHAPE.value)
  for regime in settings.regimes:
    if regime not in benchmark.REGIMES:
      raise cli.UsageError(f"--regimes: {regime!r} is not one of {', '.join(benchmark.REGIMES)}")
  for model in settings.models:
    if model not in benchmark.BENCH_MODELS:
      raise cli.UsageError(f"--models: {model!r} is not one of {', '.join(benchmark.BENCH_MODELS)}")
  report = benchmark.run(settings, torch_reference=_TORCH.value,
                         log=lambda line: print(line, flush=True))
  print()
  print(benchmark.format_table(report))
  with open(_OUT.value, "w") as f:
    json.dump(report, f, indent=2)
  print(f"\nWrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser())
