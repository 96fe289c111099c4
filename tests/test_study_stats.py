"""Statistics across seeds, the claims' verdicts and a study's aggregate, on synthetic records.

No JAX: the records are written by hand with known values, so every number
and verdict below is computed independently of the code under test.
"""
import json
import math
import os

import numpy as np
import pytest

from mixlin_jax.analysis import claims, stats
from mixlin_jax.analysis import study as study_lib

# --------------------------------------------------------------------------
# stats


def test_mean_interval_matches_hand_computed_student_t():
  # values 1, 2, 3, 4: mean 2.5, sample std sqrt(5/3); t(0.975, 3) = 3.182446
  s = stats.mean_interval([1.0, 2.0, 3.0, 4.0])
  half = 3.182446305284263 * math.sqrt(5 / 3) / 2
  assert s["n"] == 4
  assert s["mean"] == pytest.approx(2.5)
  assert s["std"] == pytest.approx(math.sqrt(5 / 3))
  assert s["ci_low"] == pytest.approx(2.5 - half, rel=1e-9)
  assert s["ci_high"] == pytest.approx(2.5 + half, rel=1e-9)


def test_mean_interval_edge_cases():
  one = stats.mean_interval([3.0, float("nan"), None])
  assert one["n"] == 1 and one["mean"] == 3.0
  assert math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
  same = stats.mean_interval([2.0, 2.0, 2.0])
  assert same["ci_low"] == same["ci_high"] == 2.0
  assert stats.mean_interval([])["n"] == 0


def test_paired_difference_uses_pairs_not_two_means():
  # Large seed-to-seed spread, constant-ish shift of +1: paired CI excludes 0.
  base = [10.0, 20.0, 30.0, 40.0]
  shifted = [11.0, 21.2, 30.9, 41.1]
  d = stats.paired_difference(shifted, base)
  diffs = np.array(shifted) - np.array(base)
  half = 3.182446305284263 * diffs.std(ddof=1) / 2
  assert d["n"] == 4
  assert d["mean"] == pytest.approx(diffs.mean())
  assert d["ci_low"] == pytest.approx(diffs.mean() - half)
  assert d["ci_high"] == pytest.approx(diffs.mean() + half)
  assert d["ci_low"] > 0
  assert d["relative"] == pytest.approx(diffs.mean() / 25.0)
  # scipy's paired t-test gives the same p-value
  from scipy import stats as scipy_stats
  assert d["p_value"] == pytest.approx(
      scipy_stats.ttest_rel(shifted, base).pvalue)
  # An unpaired comparison of the two means would not exclude 0.
  assert stats.mean_interval(shifted)["ci_low"] < np.mean(base)


def test_paired_difference_drops_incomplete_pairs():
  d = stats.paired_difference([1.0, None, 3.0, 5.0], [0.0, 1.0, float("nan"),
                                                      4.0])
  assert d["n"] == 2 and d["mean"] == pytest.approx(1.0)


def test_direction():
  assert stats.direction({"ci_low": 0.1, "ci_high": 0.3}) == 1
  assert stats.direction({"ci_low": -0.3, "ci_high": -0.1}) == -1
  assert stats.direction({"ci_low": -0.1, "ci_high": 0.3}) == 0
  assert stats.direction({"ci_low": math.nan, "ci_high": math.nan}) == 0


# --------------------------------------------------------------------------
# claims


@pytest.mark.parametrize("interval,claimed,expected", [
    ({"ci_low": 0.1, "ci_high": 0.5}, +1, "supported"),
    ({"ci_low": 0.1, "ci_high": 0.5}, -1, "contradicted"),
    ({"ci_low": -0.1, "ci_high": 0.5}, +1, "inconclusive"),
    ({"ci_low": math.nan, "ci_high": math.nan}, -1, "inconclusive"),
])
def test_layer_verdict(interval, claimed, expected):
  assert claims.layer_verdict(interval, claimed) == expected


@pytest.mark.parametrize("verdicts,expected", [
    (["supported", "supported", "inconclusive"], "supported"),
    (["supported", "inconclusive", "inconclusive"], "inconclusive"),
    (["contradicted", "contradicted", "inconclusive", "inconclusive"],
     "contradicted"),
    (["supported", "contradicted"], "mixed"),
    ([], "inconclusive"),
])
def test_overall_verdict(verdicts, expected):
  assert claims.overall_verdict(verdicts) == expected


def test_claim_layers_intermediate_excludes_output_and_linear_layers():
  layers = ["00_stem", "01_g1", "02_g2", "03_pooled", "04_logits"]
  a, b = claims.CLAIMS[0], claims.CLAIMS[1]
  assert claims.claim_layers(a, layers, ["00_stem"]) == [
      "01_g1", "02_g2", "03_pooled"]
  assert claims.claim_layers(b, layers, ["00_stem"]) == [
      "01_g1", "02_g2", "03_pooled", "04_logits"]


# --------------------------------------------------------------------------
# a synthetic study

LAYERS = ["00_stem", "01_conv", "02_pooled", "03_logits"]
WEIGHTS = [[0.75, 0.25], [0.5, 0.5], [0.25, 0.75]]
EPOCHS = 4
# Final-epoch interpolation error per regime and layer (before seed noise).
BASE = {"00_stem": 0.0, "01_conv": 1.0, "02_pooled": 2.0, "03_logits": 1.0}
SHIFT = {
    "erm": {l: 0.0 for l in LAYERS},
    # (a) supported: every intermediate layer clearly above erm.
    "supmix2": {"00_stem": 0.0, "01_conv": 0.5, "02_pooled": 0.8,
                "03_logits": -0.5},
    # (b) contradicted: every layer clearly above erm.
    "mix2": {"00_stem": 0.0, "01_conv": 0.4, "02_pooled": 0.6,
             "03_logits": 0.3},
    # (b) supported for mix3: every layer below erm; noise too large on one.
    "mix3": {"00_stem": 0.0, "01_conv": -0.5, "02_pooled": -0.9,
             "03_logits": -0.4},
}
# Epoch (1-based) from which the test accuracy is at its final level.
REACH = {"erm": 3, "supmix2": 3, "mix2": 2, "mix3": 2}


def _record(regime, seed, epoch, rng):
  final = epoch == EPOCHS
  lin = {"layers": LAYERS, "weights": WEIGHTS, "num_tuples": 64,
         "tangent_t": [w[1] for w in WEIGHTS]}
  for metric in ("interp_error", "relative_error", "tangent_residual"):
    lin[metric] = {}
    for layer in LAYERS:
      value = BASE[layer] + (SHIFT[regime][layer] if final else 0.0)
      if layer != "00_stem":
        value += 0.3 * seed + 0.01 * rng.standard_normal()  # seed effect, paired
      lin[metric][layer] = {"mean": [value] * len(WEIGHTS),
                            "stderr": [0.01] * len(WEIGHTS)}
  acc = 0.8 if epoch >= REACH[regime] else 0.3 + 0.01 * seed
  return {"epoch": epoch, "step": 10 * epoch, "learning_rate": 0.1,
          "train": {"loss": 1.0 / epoch, "supervised": 1.0 / epoch},
          "test": {"student_accuracy": acc, "teacher_accuracy": acc - 0.01,
                   "student_loss": 1.0 / epoch, "teacher_loss": 1.0 / epoch},
          "labelled": {"student_accuracy": acc, "student_loss": 2.0 / epoch},
          "linearity": lin}


def write_synthetic_study(out, regimes=("erm", "supmix2", "mix2", "mix3"),
                          seeds=(0, 1, 2), skip=(), incomplete=(),
                          collapsed=None):
  """``collapsed``: {run name: layer flagged dead/collapsed at the end}."""
  rng = np.random.default_rng(0)
  for seed in seeds:
    for regime in regimes:
      name = f"{regime}_seed{seed}"
      if name in skip:
        continue
      wd = os.path.join(out, "runs", name)
      os.makedirs(wd)
      config = {"train.epochs": EPOCHS, "model.name": "cnn",
                "data.dataset": "digits", "data.num_labels": 100,
                "linearity.num_tuples": 64, "linearity.split": "test",
                "linearity.num_points": 2, "seed": seed}
      with open(os.path.join(wd, "config.json"), "w") as f:
        json.dump({"config": config, "versions": {}}, f)
      last = EPOCHS - 2 if name in incomplete else EPOCHS
      with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
        for epoch in range(1, last + 1):
          record = _record(regime, seed, epoch, rng)
          record["linearity"]["collapsed_layers"] = (
              [collapsed[name]] if collapsed and name in collapsed and
              epoch == EPOCHS else [])
          f.write(json.dumps(record) + "\n")


def _verdict(agg, claim, regime):
  return next(v for v in agg.verdicts
              if v["claim"] == claim and v["regime"] == regime)


def test_study_verdicts_on_synthetic_records(tmp_path):
  out = str(tmp_path / "study")
  write_synthetic_study(out)
  agg = study_lib.aggregate(out)
  assert agg.baseline == "erm"
  assert agg.data.regimes == ["erm", "supmix2", "mix2", "mix3"]
  assert agg.data.seeds == [0, 1, 2]
  assert agg.excluded == ["00_stem"]  # exactly linear in every run
  a = _verdict(agg, "a", "supmix2")
  assert a["verdict"] == "supported"
  assert a["layers"] == ["01_conv", "02_pooled"]  # logits and stem excluded
  assert _verdict(agg, "b", "mix2")["verdict"] == "contradicted"
  assert _verdict(agg, "b", "mix3")["verdict"] == "supported"
  # every metric is reported, not only the primary one
  assert set(a["metrics"]) == {"interp_error", "relative_error",
                               "tangent_residual"}
  # the paired difference equals the designed shift (the seed effect cancels)
  pd_row = agg.paired[(agg.paired["regime"] == "supmix2") &
                      (agg.paired["layer"] == "02_pooled") &
                      (agg.paired["metric"] == "interp_error") &
                      (agg.paired["epoch"] == EPOCHS)].iloc[0]
  assert pd_row["mean_diff"] == pytest.approx(0.8, abs=0.03)
  assert pd_row["n_pairs"] == 3
  # convergence: mix regimes reach 0.9 x 0.8 at epoch 2, erm at 3 in every seed
  c = _verdict(agg, "c", "mix2")
  assert c["verdict"] == "supported"
  assert c["interval"]["mean"] == pytest.approx(-1.0)
  assert agg.convergence_targets["target_accuracy"] == pytest.approx(0.72)
  # per-tuple standard errors are kept beside the seed statistics
  s = agg.summary
  row = s[(s["regime"] == "erm") & (s["layer"] == "01_conv") &
          (s["metric"] == "interp_error") & (s["epoch"] == EPOCHS)].iloc[0]
  assert row["tuple_sem_mean"] == pytest.approx(0.01)
  assert row["n_seeds"] == 3
  assert row["mean"] == pytest.approx(1.3, abs=0.02)  # 1 + 0.3 x mean seed


def test_study_outputs_are_written(tmp_path):
  out = str(tmp_path / "study")
  write_synthetic_study(out)
  lines = []
  study_lib.aggregate_and_report(out, print_fn=lines.append)
  for name in ("claims.md", "claims.json", "tables/runs.csv",
               "tables/linearity_summary.csv", "tables/paired_differences.csv",
               "tables/accuracy.csv", "tables/convergence.csv",
               "figures/paired_differences.png", "figures/final_profiles.png",
               "figures/layers_over_epochs.png",
               "figures/accuracy_curves.png", "figures/convergence.png"):
    path = os.path.join(out, name)
    assert os.path.getsize(path) > 200, name
  with open(os.path.join(out, "figures", "paired_differences.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  md = open(os.path.join(out, "claims.md")).read()
  assert "| (a) | supmix2 | **supported**" in md
  assert "| (b) | mix2 | **contradicted**" in md
  js = json.load(open(os.path.join(out, "claims.json")))
  assert {v["claim"] for v in js["verdicts"]} == {"a", "b", "c"}
  assert any("claim (b) mix3 vs erm: supported" in l for l in lines)


def test_aggregate_names_missing_and_incomplete_runs(tmp_path):
  out = str(tmp_path / "study")
  write_synthetic_study(out, regimes=("erm", "mix2"), skip={"mix2_seed2"},
                        incomplete={"erm_seed1"})
  lines = []
  agg = study_lib.aggregate_and_report(out, regimes=["erm", "mix2"],
                                       seeds=[0, 1, 2], print_fn=lines.append)
  assert "not aggregated: mix2_seed2 (missing)" in lines
  assert "not aggregated: erm_seed1 (incomplete (2/4 epochs))" in lines
  # only complete pairs enter the paired differences: seed 0 alone here
  final = agg.paired[agg.paired["epoch"] == EPOCHS]
  assert set(final["n_pairs"]) == {1}
  assert _verdict(agg, "b", "mix2")["verdict"] == "inconclusive"
  md = open(os.path.join(out, "claims.md")).read()
  assert "**Not included**" in md and "mix2_seed2 (missing)" in md


def test_aggregate_without_finished_runs_is_a_clear_error(tmp_path):
  with pytest.raises(study_lib.AnalysisError, match="no finished run"):
    study_lib.aggregate(str(tmp_path))


def test_collapsed_layer_is_left_out_of_claims_and_named(tmp_path):
  out = str(tmp_path / "study")
  write_synthetic_study(out, collapsed={"mix3_seed1": "02_pooled"})
  agg = study_lib.aggregate(out)
  assert agg.collapsed == {"02_pooled": ["mix3_seed1"]}
  for v in agg.verdicts:
    assert "02_pooled" not in v.get("layers", [])
  assert _verdict(agg, "a", "supmix2")["layers"] == ["01_conv"]
  md = study_lib.claims_markdown(agg, "t")
  assert "Left out as dead/collapsed" in md and "pooled in mix3_seed1" in md
  paths = study_lib.write_all(agg)
  assert all(os.path.getsize(p) > 0 for p in paths)


def test_runs_without_the_collapse_flag_say_so(tmp_path):
  out = str(tmp_path / "study")
  write_synthetic_study(out, regimes=("erm", "mix2"), seeds=(0, 1))
  for name in os.listdir(os.path.join(out, "runs")):
    path = os.path.join(out, "runs", name, "metrics.jsonl")
    lines = [json.loads(l) for l in open(path)]
    for r in lines:
      del r["linearity"]["collapsed_layers"]
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in lines)
  md = study_lib.claims_markdown(study_lib.aggregate(out), "t")
  assert "logged before the dead/collapsed flag existed" in md
