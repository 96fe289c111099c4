"""The benchmark runs end to end in its tiny mode and reports every field.

Speeds are never asserted here: they are measured by experiments/benchmark.py.
"""
import dataclasses

from mixlin_jax import benchmark

TRAIN_FIELDS = {"model", "regime", "batch_size", "compute_dtype", "compile_s",
                "step_ms", "images_per_step", "images_per_s", "mean_loss",
                "compiles", "peak_memory_bytes"}
LINEARITY_FIELDS = {"model", "kind", "dtype", "num_tuples", "num_weights",
                    "num_layers", "compile_s", "seconds", "naive_tuples_timed",
                    "naive_seconds_extrapolated", "speedup_vs_naive",
                    "floor_seconds", "ratio_vs_floor", "cpu_seconds",
                    "floor_cpu_seconds", "cpu_ratio_vs_floor"}


def test_tiny_benchmark_reports_every_field():
  settings = dataclasses.replace(benchmark.BenchSettings.tiny(),
                                 regimes=("mix2",))
  report = benchmark.run(settings, log=lambda _: None)
  assert report["platform"] == "cpu"
  (row,) = report["train"]
  assert TRAIN_FIELDS <= set(row)
  assert row["images_per_step"] == 2 * settings.batch_size  # labelled + unlabelled
  assert row["compiles"] == 1  # the timed steps did not recompile
  kinds = {r["kind"] for r in report["linearity"]}
  assert kinds == {"per_epoch", "post_hoc"}
  for r in report["linearity"]:
    assert LINEARITY_FIELDS <= set(r)
    assert r["num_weights"] == len(benchmark.POST_HOC_GRID) == 8
    assert r["num_layers"] == 5  # the CNN's five representations
    assert r["floor_seconds"] > 0 and r["ratio_vs_floor"] > 0
  assert "fraction_of_epoch" in report["linearity"][0]
  table = benchmark.format_table(report)
  assert "| cnn | mix2 | 16 |" in table and "post_hoc" in table
