"""Rules of the claims and of a study's aggregate that the README states,
each checked from its wording there on hand-written records (no JAX):
which layers are "intermediate", the exactly-half rule, "linear by
construction" in every run, the final-epoch collapse flag, the value of a
run as the mean over mixing weights, the ``t`` column of the tidy rows."""

import json
import os

import pytest

from mixlin_jax.analysis import claims
from mixlin_jax.analysis import study as study_lib
from mixlin_jax.analysis import tables

from test_study_stats import EPOCHS, write_synthetic_study

CLAIM_A, CLAIM_B = claims.CLAIMS[0], claims.CLAIMS[1]
LAYERS = ["00_stem", "01_g1", "02_g2", "03_logits"]

# ---------------------------------------------------------------------------
# claims: the rules


@pytest.mark.parametrize(
    "excluded,want",
    [
        ([], ["00_stem", "01_g1", "02_g2"]),
        (["00_stem"], ["01_g1", "02_g2"]),
        # The network's last layer is not intermediate, and leaving it out
        # (collapsed logits) does not make the layer before it the last.
        (["03_logits"], ["00_stem", "01_g1", "02_g2"]),
        (["02_g2", "03_logits"], ["00_stem", "01_g1"]),
    ],
)
def test_intermediate_is_every_kept_layer_but_the_networks_last(excluded, want):
  """README: "Intermediate = every recorded representation except the
  logits"; excluded layers are left out of both claims."""
  assert claims.claim_layers(CLAIM_A, LAYERS, excluded) == want
  assert claims.claim_layers(CLAIM_B, LAYERS, excluded) == [
      l for l in LAYERS if l not in excluded
  ]


S, C, I = claims.SUPPORTED, claims.CONTRADICTED, claims.INCONCLUSIVE


@pytest.mark.parametrize(
    "verdicts,want",
    [
        ([S, I], S),  # exactly half: "at least half"
        ([S, S, I, I], S),
        ([C, I], C),  # the same rule for contradicted
        ([C, C, I, I], C),
        ([S, I, I], I),  # less than half
        ([C, I, I], I),
        ([S, C, S, S], claims.MIXED),  # none the other way is required
    ],
)
def test_at_least_half_rule_for_both_directions(verdicts, want):
  """README: supported when at least half of the layers are supported and
  none contradicted (contradicted likewise), mixed when both occur."""
  assert claims.overall_verdict(verdicts) == want


# ---------------------------------------------------------------------------
# a study's aggregate


def _edit_final_record(out, run, edit, epoch=EPOCHS):
  path = os.path.join(out, "runs", run, "metrics.jsonl")
  with open(path) as f:
    records = [json.loads(l) for l in f]
  for r in records:
    if r["epoch"] == epoch:
      edit(r)
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)


def _set_interp(layer, means):
  def edit(record):
    record["linearity"]["interp_error"][layer]["mean"] = list(means)

  return edit


def _verdict(agg, claim, regime):
  return next(
      v for v in agg.verdicts if v["claim"] == claim and v["regime"] == regime
  )


def test_linear_by_construction_needs_every_run_below_the_bound(tmp_path):
  """README: "interpolation error below 1e-6 in every run".  The synthetic
  stem scores 0 in all 12 runs; 5e-6 in one run (mean over runs 4e-7)
  keeps it in the claims, 5e-7 does not."""
  out = str(tmp_path / "study")
  write_synthetic_study(out)
  _edit_final_record(out, "mix2_seed1", _set_interp("00_stem", [5e-7] * 3))
  agg = study_lib.aggregate(out)
  assert agg.excluded == ["00_stem"]
  _edit_final_record(out, "mix2_seed1", _set_interp("00_stem", [5e-6] * 3))
  agg = study_lib.aggregate(out)
  assert agg.excluded == []
  assert _verdict(agg, "a", "supmix2")["layers"] == [
      "00_stem",
      "01_conv",
      "02_pooled",
  ]
  assert "00_stem" in _verdict(agg, "b", "mix2")["layers"]


def test_layer_collapsed_only_before_the_final_epoch_stays_in(tmp_path):
  """The claims are about the final epoch: a layer flagged dead/collapsed
  at an earlier epoch only is measured at the end, and kept."""
  out = str(tmp_path / "study")
  write_synthetic_study(out)

  def flag(record):
    record["linearity"]["collapsed_layers"] = ["02_pooled"]

  _edit_final_record(out, "mix3_seed1", flag, epoch=EPOCHS - 1)
  agg = study_lib.aggregate(out)
  assert agg.collapsed == {}
  assert _verdict(agg, "a", "supmix2")["layers"] == ["01_conv", "02_pooled"]
  assert "02_pooled" in _verdict(agg, "b", "mix3")["layers"]


def test_value_of_a_run_is_the_mean_over_mixing_weights(tmp_path):
  """README (Statistics): "the mean over mixing weights of the per-weight
  means over tuples", with unequal per-weight values (mean 3, median 2)."""
  out = str(tmp_path / "study")
  write_synthetic_study(out, regimes=("erm", "mix2"), seeds=(0, 1))
  _edit_final_record(out, "erm_seed0", _set_interp("01_conv", [1.0, 2.0, 6.0]))
  lin = study_lib.aggregate(out).data.linearity
  row = lin[
      (lin.regime == "erm")
      & (lin.seed == 0)
      & (lin.epoch == EPOCHS)
      & (lin.layer == "01_conv")
      & (lin.metric == "interp_error")
  ]
  assert row["value"].tolist() == [pytest.approx(3.0)]


def test_average_over_weights_is_the_plain_mean():
  rows = [
      {
          "run": "r",
          "epoch": 1,
          "layer": "l",
          "metric": "interp_error",
          "value": v,
          "stderr": e,
      }
      for v, e in ((1.0, 0.1), (2.0, 0.2), (6.0, 0.6))
  ]
  (avg,) = tables.average_over_weights(rows)
  assert avg["value"] == pytest.approx(3.0)
  assert avg["stderr"] == pytest.approx(0.3)  # mean of the stderrs
  assert avg["num_weights"] == 3


@pytest.mark.parametrize("k", [2, 3])
def test_tidy_rows_t_is_the_path_parameter(k):
  """The ``t`` of a row: w_2 for K = 2 (weights (1 - t, t)), the
  ``tangent_t`` entry for the tangent residual, none for Dirichlet weights."""
  weights = [[0.8, 0.2], [0.3, 0.7]] if k == 2 else [[0.2, 0.3, 0.5]] * 2
  stats = {"mean": [1.0, 2.0], "stderr": [0.1, 0.1]}
  result = {
      "layers": ["l"],
      "weights": weights,
      "tangent_t": [0.25, 0.75] if k == 3 else [0.2, 0.7],
      "num_tuples": 4,
      "interp_error": {"l": stats},
      "tangent_residual": {"l": stats},
  }
  rows = tables.linearity_rows(result, run="r", epoch=1)
  t = {
      m: [r["t"] for r in rows if r["metric"] == m]
      for m in ("interp_error", "tangent_residual")
  }
  if k == 2:
    assert t == {"interp_error": [0.2, 0.7], "tangent_residual": [0.2, 0.7]}
  else:
    assert t == {"interp_error": [None, None], "tangent_residual": [0.25, 0.75]}
