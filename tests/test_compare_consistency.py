"""compare_runs: one colour per run (and per regime) in every figure, a warning for partial analyses, a loss comparable across regimes."""
import json
import logging
import os

import matplotlib

from mixlin_jax import analysis
from mixlin_jax.analysis import figures

from test_study_stats import write_synthetic_study


def test_run_colors_follow_regimes_then_tab10():
  colors = figures.run_colors(["mix2", "my_model", "erm", "other"])
  assert colors["mix2"] == figures.REGIME_COLORS["mix2"]
  assert colors["erm"] == figures.REGIME_COLORS["erm"]
  tab10 = matplotlib.colormaps["tab10"]
  assert colors["my_model"] == tab10(0) and colors["other"] == tab10(1)
  assert figures.regime_color("supmix2") == figures.REGIME_COLORS["supmix2"]
  assert figures.regime_color("mix7") == figures.regime_color("mix7")  # stable


def test_compare_warns_on_partial_analysis_and_uses_clean_loss(tmp_path,
                                                               caplog):
  out = str(tmp_path / "s")
  write_synthetic_study(out, regimes=("erm", "supmix2"), seeds=(0,))
  runs = [os.path.join(out, "runs", n) for n in ("erm_seed0", "supmix2_seed0")]
  rows = analysis.logged_linearity_rows(runs[0], "erm")
  analysis.write_table(rows, os.path.join(runs[0], "analysis"))
  with caplog.at_level(logging.WARNING):
    result = analysis.compare_runs(runs, str(tmp_path / "cmp"),
                                   names=["erm", "supmix2"])
  assert any("only erm have an analysis/ table" in r.getMessage()
             for r in caplog.records)
  conv = result["convergence_rows"]
  assert {r["loss_key"] for r in conv} == {"labelled.student_loss"}
  # the synthetic labelled loss is 2 / epoch for both runs
  assert [r["final_loss"] for r in conv] == [0.5, 0.5]
  with open(os.path.join(runs[0], "metrics.jsonl")) as f:
    assert "labelled" in json.loads(f.readline())


def test_compare_warns_on_a_torn_metrics_line(tmp_path, caplog):
  """A kill during a write leaves a torn last line: compare says so."""
  out = str(tmp_path / "s")
  write_synthetic_study(out, regimes=("erm", "supmix2"), seeds=(0,))
  runs = [os.path.join(out, "runs", n) for n in ("erm_seed0", "supmix2_seed0")]
  with open(os.path.join(runs[1], "metrics.jsonl"), "a") as f:
    f.write('{"epoch": 5, "test": {"student_acc')
  with caplog.at_level(logging.WARNING):
    analysis.compare_runs(runs, str(tmp_path / "cmp"), names=["erm", "mix"])
  torn = [r.getMessage() for r in caplog.records if "torn" in r.getMessage()]
  assert len(torn) == 1 and runs[1] in torn[0] and "line(s) 5 " in torn[0]
