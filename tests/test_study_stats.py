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
# Epoch (1-based) from which the test accuracy is at its final level, and
# that level: the unsupervised regimes end above erm (the precondition of
# claims (b) and (c) holds for them).
REACH = {"erm": 3, "supmix2": 3, "mix2": 2, "mix3": 2}
FINAL_ACCURACY = {"erm": 0.8, "supmix2": 0.82, "mix2": 0.86, "mix3": 0.85}


def default_accuracy(regime, seed, epoch):
  return FINAL_ACCURACY[regime] if epoch >= REACH[regime] else 0.3 + 0.01 * seed


def _record(regime, seed, epoch, rng, accuracy=default_accuracy,
            epochs=EPOCHS):
  final = epoch == epochs
  lin = {"layers": LAYERS, "weights": WEIGHTS, "num_tuples": 64,
         "tangent_t": [w[1] for w in WEIGHTS]}
  for metric in ("interp_error", "relative_error", "tangent_residual"):
    lin[metric] = {}
    for layer in LAYERS:
      value = BASE[layer] + (SHIFT.get(regime, SHIFT["erm"])[layer]
                             if final else 0.0)
      if layer != "00_stem":
        value += 0.3 * seed + 0.01 * rng.standard_normal()  # seed effect, paired
      lin[metric][layer] = {"mean": [value] * len(WEIGHTS),
                            "stderr": [0.01] * len(WEIGHTS)}
  acc = accuracy(regime, seed, epoch)
  return {"epoch": epoch, "step": 10 * epoch, "learning_rate": 0.1,
          "train": {"loss": 1.0 / epoch, "supervised": 1.0 / epoch},
          "test": {"student_accuracy": acc, "teacher_accuracy": acc - 0.01,
                   "student_loss": 1.0 / epoch, "teacher_loss": 1.0 / epoch},
          "labelled": {"student_accuracy": acc, "student_loss": 2.0 / epoch},
          "linearity": lin}


def write_synthetic_study(out, regimes=("erm", "supmix2", "mix2", "mix3"),
                          seeds=(0, 1, 2), skip=(), incomplete=(),
                          collapsed=None, accuracy=default_accuracy,
                          epochs=EPOCHS):
  """``collapsed``: {run name: layer flagged dead/collapsed at the end};
  ``accuracy(regime, seed, epoch)``: the student's test accuracy."""
  rng = np.random.default_rng(0)
  for seed in seeds:
    for regime in regimes:
      name = f"{regime}_seed{seed}"
      if name in skip:
        continue
      wd = os.path.join(out, "runs", name)
      os.makedirs(wd)
      config = {"train.epochs": epochs, "model.name": "cnn",
                "data.dataset": "digits", "data.num_labels": 100,
                "linearity.num_tuples": 64, "linearity.split": "test",
                "linearity.num_points": 2, "seed": seed}
      with open(os.path.join(wd, "config.json"), "w") as f:
        json.dump({"config": config, "versions": {}}, f)
      last = epochs - 2 if name in incomplete else epochs
      with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
        for epoch in range(1, last + 1):
          record = _record(regime, seed, epoch, rng, accuracy, epochs)
          record["linearity"]["collapsed_layers"] = (
              [collapsed[name]] if collapsed and name in collapsed and
              epoch == epochs else [])
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
  # convergence: mix regimes reach erm's final 0.8 at epoch 2, erm at 3 in
  # every seed
  c = _verdict(agg, "c", "mix2")
  assert c["verdict"] == "supported"
  assert c["interval"]["mean"] == pytest.approx(-1.0)
  assert agg.convergence_targets["baseline_final_accuracy"] == pytest.approx(
      0.8)
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
  # one pair has no interval: neither the precondition nor a layer can pass
  b = _verdict(agg, "b", "mix2")
  assert b["verdict"] == claims.NOT_TESTED
  assert b["metrics"]["interp_error"]["verdict"] == "inconclusive"
  md = open(os.path.join(out, "claims.md")).read()
  assert "**Not included**" in md and "mix2_seed2 (missing)" in md


def test_aggregate_without_finished_runs_is_a_clear_error(tmp_path):
  with pytest.raises(study_lib.AnalysisError, match="no finished run"):
    study_lib.aggregate(str(tmp_path))


def test_aggregate_of_the_baseline_alone_is_a_clear_error(tmp_path):
  """A study (or pilot) whose finished runs are all of one regime has no
  paired difference to report: one line naming the fix, not a KeyError."""
  out = str(tmp_path / "study")
  write_synthetic_study(out, regimes=("mix2",))
  with pytest.raises(study_lib.AnalysisError, match="nothing to compare.*--regimes"):
    study_lib.aggregate(out)


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


# --------------------------------------------------------------------------
# the precondition of (b) and (c)


def test_precondition_failing_leaves_b_and_c_untested(tmp_path):
  out = str(tmp_path / "study")
  # mix3 ends exactly where erm ends: no accuracy gain, the precondition
  # fails for it; mix2 ends above erm in every seed.
  def accuracy(regime, seed, epoch):
    final = {"erm": 0.8, "mix2": 0.86, "mix3": 0.8}[regime]
    return final + 0.01 * seed if epoch >= 2 else 0.3
  write_synthetic_study(out, regimes=("erm", "mix2", "mix3"),
                        accuracy=accuracy)
  agg = study_lib.aggregate(out)
  pre = {p["regime"]: p for p in agg.precondition}
  assert pre["mix2"]["holds"] and pre["mix2"]["mean"] == pytest.approx(0.06)
  assert not pre["mix3"]["holds"] and pre["mix3"]["mean"] == pytest.approx(0)
  assert _verdict(agg, "b", "mix2")["verdict"] == "contradicted"
  for claim in ("b", "c"):
    v = _verdict(agg, claim, "mix3")
    assert v["verdict"] == claims.NOT_TESTED and not v["tested"]
  # mix3's linearity shift is designed "supported": the numbers stay, for
  # information, but no verdict is given
  assert _verdict(agg, "b", "mix3")["metrics"]["interp_error"][
      "verdict"] == "supported"
  md = study_lib.claims_markdown(agg, "t")
  headings = [l for l in md.splitlines() if l.startswith("## ")]
  assert headings[0].startswith("## Precondition")
  assert "| mix3 | 0 [0, 0] | **fails**: (b), (c) not tested |" in md
  assert "| (b) | mix3 | **not tested** |" in md
  assert "not effective at this budget (mix3" in md


def test_precondition_is_only_for_unsupervised_regimes():
  rows = claims.precondition(
      ["erm", "supmix2", "mix2"], "erm",
      {"supmix2": {"n": 3, "mean": -0.1, "ci_low": -0.2, "ci_high": -0.05},
       "mix2": {"n": 3, "mean": 0.02, "ci_low": -0.01, "ci_high": 0.05}})
  by = {r["regime"]: r for r in rows}
  assert set(by) == {"supmix2", "mix2"}
  assert not by["supmix2"]["applies"] and by["mix2"]["applies"]
  assert not by["mix2"]["holds"]  # the interval covers 0
  # (a) never depends on it: a supmix regime stays tested even when "failing"
  verdicts = claims.evaluate(
      claims.CLAIMS, ["erm", "supmix2", "mix2"], "erm", ["l0", "l1"], [],
      ["interp_error"], {}, {}, precondition_met={"supmix2": False,
                                                  "mix2": False})
  tested = {(v["claim"], v["regime"]): v["tested"] for v in verdicts}
  assert tested == {("a", "supmix2"): True, ("b", "mix2"): False,
                    ("c", "mix2"): False}


# --------------------------------------------------------------------------
# claim (c) on synthetic curves where the answer is known

CURVE_EPOCHS = 10


def _ramp(reach_epoch, final):
  """Rises linearly from 0.1 to ``final`` at ``reach_epoch``, then flat."""
  def acc(epoch):
    if epoch >= reach_epoch:
      return final
    return 0.1 + (final - 0.1) * epoch / reach_epoch
  return acc


CURVES = {
    "erm": _ramp(8, 0.80),
    "mix2": _ramp(3, 0.85),    # faster: erm's final 0.8 at epoch 3
    "mix3": _ramp(10, 0.85),   # slower: 0.8 only at epoch 10
    "mix4": _ramp(10, 0.70),   # never reaches 0.8
    "mix5": _ramp(8, 0.80),    # the same curve as erm
}


def _curve_accuracy(regime, seed, epoch):
  # A seed-dependent wiggle that keeps each curve's epochs-to-0.8: the
  # equal regime differs from erm by noise alone.
  wiggle = 0.004 * math.sin(3.0 * seed + 7.0 * epoch + len(regime))
  value = CURVES[regime](epoch)
  return value if value >= 0.8 else min(value + wiggle, 0.79)


def test_convergence_test_on_synthetic_curves(tmp_path):
  out = str(tmp_path / "study")
  write_synthetic_study(out, regimes=tuple(CURVES), seeds=(0, 1, 2, 3),
                        accuracy=_curve_accuracy, epochs=CURVE_EPOCHS)
  agg = study_lib.aggregate(out)
  assert agg.convergence_targets["baseline_final_accuracy"] == pytest.approx(
      0.8)
  conv = agg.convergence.set_index(["regime", "seed"])
  assert conv.loc[("erm", 0), "epochs_to_baseline_final"] == 8
  assert conv.loc[("mix2", 1), "epochs_to_baseline_final"] == 3
  assert conv.loc[("mix3", 2), "epochs_to_baseline_final"] == 10
  # never reaching counts as epochs + 1, marked censored
  assert conv.loc[("mix4", 3), "epochs_to_baseline_final"] == CURVE_EPOCHS + 1
  assert conv.loc[("mix4", 3), "baseline_final_censored"]
  assert not conv.loc[("mix3", 3), "baseline_final_censored"]
  tests = {r: _verdict(agg, "c", r)["tests"] for r in CURVES if r != "erm"}
  primary = {r: t["epochs_to_baseline_final"] for r, t in tests.items()}
  assert primary["mix2"]["mean"] == pytest.approx(-5)
  assert primary["mix2"]["verdict"] == "supported"
  assert primary["mix3"]["mean"] == pytest.approx(2)
  assert primary["mix3"]["verdict"] == "contradicted"
  assert primary["mix4"]["mean"] == pytest.approx(3)
  assert primary["mix4"]["verdict"] == "contradicted"
  assert primary["mix5"]["verdict"] == "inconclusive"
  auc = {r: t["accuracy_auc"] for r, t in tests.items()}
  assert auc["mix2"]["verdict"] == "supported"
  assert auc["mix3"]["verdict"] == "contradicted"
  assert auc["mix4"]["verdict"] == "contradicted"
  assert auc["mix5"]["verdict"] == "inconclusive"
  erm_auc = np.mean([_curve_accuracy("erm", 0, e)
                     for e in range(1, CURVE_EPOCHS + 1)])
  assert conv.loc[("erm", 0), "accuracy_auc"] == pytest.approx(erm_auc)
  # the faster regime is the only one whose precondition-gated verdict is a
  # verdict for the slower one too (it ends above erm); mix4 ends below
  assert _verdict(agg, "c", "mix2")["verdict"] == "supported"
  assert _verdict(agg, "c", "mix3")["verdict"] == "contradicted"
  assert _verdict(agg, "c", "mix4")["verdict"] == claims.NOT_TESTED


def test_convergence_target_comes_from_the_baseline_alone(tmp_path):
  out = str(tmp_path / "study")
  finals = {"erm": 0.6, "supmix2": 0.7, "mix2": 0.9}
  write_synthetic_study(
      out, regimes=tuple(finals),
      accuracy=lambda r, s, e: finals[r] if e >= 2 else 0.1)
  agg = study_lib.aggregate(out)
  assert agg.convergence_targets["baseline_final_accuracy"] == pytest.approx(
      0.6)
  conv = agg.convergence
  # every regime reaches 0.6 at epoch 2 (a target of the mean of all
  # regimes, 0.73, would leave erm never reaching it)
  assert set(conv["epochs_to_baseline_final"]) == {2}


def test_epochs_to_reach_and_auc():
  assert claims.epochs_to_reach([1, 2, 3], [0.1, 0.5, 0.9], 0.5, 3) == (
      2, False)
  assert claims.epochs_to_reach([1, 2, 3], [0.1, 0.2, 0.3], 0.5, 3) == (
      4, True)
  assert claims.epochs_to_reach([1, 2], [math.nan, 0.7], 0.5, 2) == (2, False)
  assert claims.accuracy_auc([0.2, 0.4, math.nan]) == pytest.approx(0.3)
  assert math.isnan(claims.accuracy_auc([]))


# --------------------------------------------------------------------------
# verdicts along training


def test_training_checkpoints_and_stability():
  assert claims.training_checkpoints(60) == [15, 30, 45, 60]
  assert claims.training_checkpoints(4) == [1, 2, 3, 4]
  assert claims.training_checkpoints(2) == [1, 2]
  assert claims.training_checkpoints(10) == [3, 5, 8, 10]
  s, i, c = "supported", "inconclusive", "contradicted"
  assert claims.stable_from([1, 2, 3, 4], [i, s, i, s]) == 4
  assert claims.stable_from([1, 2, 3, 4], [c, s, s, s]) == 2
  assert claims.stable_from([1, 2, 3, 4], [s, s, s, s]) == 1
  assert claims.stable_from([5, 10], [i, s]) == 10
  assert claims.stable_from([], []) is None


def test_verdicts_along_training(tmp_path):
  out = str(tmp_path / "study")
  write_synthetic_study(out)
  agg = study_lib.aggregate(out)
  over = agg.over_training
  row = over[(over["claim"] == "b") & (over["regime"] == "mix3") &
             (over["layer"] == "02_pooled")].set_index("epoch")
  # epoch 1: no regime is ahead of erm yet (the precondition does not hold
  # there); epochs 2-3: mix3 is ahead, its linearity equals erm's (the
  # designed shift comes at the final epoch): inconclusive; epoch 4: the
  # final, designed verdict
  assert row.loc[1, "verdict"] == claims.NOT_TESTED
  assert not row.loc[1, "precondition_holds"]
  assert row.loc[2, "verdict"] == row.loc[3, "verdict"] == "inconclusive"
  assert row.loc[4, "verdict"] == "supported"
  assert row.loc[4, "mean_diff"] == pytest.approx(-0.9, abs=0.03)
  st = agg.stability.set_index(["claim", "regime", "layer"])
  assert st.loc[("b", "mix3", "02_pooled"), "stable_from"] == 4
  # (a) is not gated: supmix2 is never ahead of erm at epoch 1, yet tested
  a = over[(over["claim"] == "a") & (over["regime"] == "supmix2")]
  assert claims.NOT_TESTED not in set(a["verdict"])
  assert set(a["layer"]) == {"01_conv", "02_pooled"}
  md = study_lib.claims_markdown(agg, "t")
  assert "## Verdicts along training" in md
  assert ("| (b) | mix3 | pooled | not tested | inconclusive | inconclusive "
          "| supported | 4 |") in md
  paths = study_lib.write_all(agg)
  assert os.path.join(out, "figures", "verdicts_over_training.png") in paths
  assert os.path.join(out, "tables", "verdicts_over_training.csv") in paths
  js = json.load(open(os.path.join(out, "claims.json")))
  assert js["over_training"]["checkpoints"] == [1, 2, 3, 4]
  assert {p["regime"] for p in js["precondition"]} == {"supmix2", "mix2",
                                                        "mix3"}
