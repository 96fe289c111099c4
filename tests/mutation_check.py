r"""Mutation check: which plausible bugs in the train step, the metrics and the analysis does the suite catch?

Each *mutant* below is one small textual edit of the library (the wrong
variables in one place, a swapped formula, a key folded with the wrong
counter, a mask that stopped masking, a schedule that stopped ramping...).
For each one the tool copies the repository (``mixlin_jax/``, ``tests/``,
``configs/``, ``experiments/``) to a temporary folder, applies the edit
there, never to these files, and runs ``pytest -x -q`` on the tests that can
see the edited code, with ``PYTHONPATH`` pointing at the copy. A mutant is

* **killed** when a test fails (the suite notices the bug),
* **survived** when every selected test passes (a missing test, unless the
  mutant is equivalent to the original),
* **stale** when its text is no longer in the file (update the list),
* **error** / **timeout** when pytest could not run (not counted as killed).

Usage, from the repository root with the project's environment active (not
run in CI; pytest does not collect it):

    nice -n 19 python tests/mutation_check.py                 # current tests
    nice -n 19 python tests/mutation_check.py --tests-from=2e40981
    python tests/mutation_check.py --list
    nice -n 19 python tests/mutation_check.py --only=ema_swapped,no_nesterov
    nice -n 19 python tests/mutation_check.py --only=no_nesterov --no-baseline \
        --tests=tests/test_train_reference.py::test_weight_decay_reaches_kernels_only

``--tests-from=REV`` takes ``tests/`` from a git revision (the library stays
the working tree's), to score an older suite against today's code. Tests a
revision lacks are skipped. The unmutated copy is run first (``--no-baseline``
skips it); if it fails, every "killed" would be meaningless and the tool
stops with status 1. Otherwise it prints a table and the score and exits 0.

Cost, measured on two CPU cores shared with other jobs (load ~5): with the
current tests, 21 minutes for the 37 mutants (a killed mutant stops at its
first failing test) plus 10 for the baseline. The suite of 2e40981, which
lets most mutants survive, took 96 minutes: a survivor runs all its tests.
The 37 mutants of the metrics and the analysis (``linearity/``, the
statistics, the claims' rules, the study aggregate but its convergence
part, the evaluator's seed in ``evaluation.py``), run with ``--only``: 37/37
with the current tests in 11 minutes (baseline included, same machine);
14/37 with the tests of 49c8e44, before tests/test_linearity_properties.py
and tests/test_analysis_properties.py, in 13 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ("mixlin_jax", "tests", "configs", "experiments")

# Tests that can see each part of the library, fastest first (with -x, a
# killed mutant stops at its first failure). Tests that compare the code with
# itself across processes (test_reliability.py, the two-process test) and the
# run.py end-to-end test are left out: they take minutes and cannot tell a
# deterministic wrong result from a right one.
REFERENCE = ["tests/test_train_reference.py"]
TRAIN = [
    "tests/test_train.py::test_train_step_compiles_once_and_learns",
    "tests/test_train.py::test_bf16_and_f32_steps_agree",
    "tests/test_train.py::test_checkpoint_round_trip_restores_identical_state",
    "tests/test_parallel.py::test_one_and_eight_devices_give_the_same_step",
]
STEP = REFERENCE + TRAIN
LOGGED_RATE = ["tests/test_analysis.py::test_logged_learning_rate_is_the_last_steps"]
MIXUP = ["tests/test_mixup_losses.py"]
DATA = [
    "tests/test_data.py::test_normalize",
    "tests/test_data.py::test_crop_flip_shape_dtype_and_identity",
    "tests/test_data.py::test_crop_is_shifted_window_of_zero_padded_image",
    "tests/test_data.py::test_crop_offsets_cover_the_range_uniformly_and_flips_are_fair",
    "tests/test_data.py::test_epoch_indices",
]
CONFIG = ["tests/test_config.py::test_digit_datasets_are_never_flipped"]
# The metrics and what turns trained networks into answers. Unit tests only:
# test_results.py::test_committed_results_are_up_to_date fails on any change
# to the aggregate, right or wrong, so it says nothing about which is right.
LIN_PROPS = "tests/test_linearity_properties.py"
LIN = "tests/test_linearity.py"
API = "tests/test_linearity_api.py"
DEGENERATE = [
    f"{LIN_PROPS}::test_threshold_constants_per_dtype",
    f"{LIN_PROPS}::test_tuples_between_the_float32_and_bfloat16_floors",
    f"{LIN_PROPS}::test_k3_tangent_path_with_merged_end_points_is_left_out",
    f"{LIN}::test_degenerate_tuples_have_no_per_tuple_value",
    f"{API}::test_identical_points_and_constant_layers_are_excluded_and_counted",
]
TANGENT_STEP = [
    f"{LIN}::test_tangent_step_onto_the_first_point_has_no_value",
    f"{LIN}::test_evaluator_leaves_out_the_step_at_that_t_and_counts_it",
    f"{LIN}::test_evaluator_counts_a_step_left_out_at_one_t_for_three_points",
]
METRICS_CORE = [
    f"{LIN}::test_square_closed_form",
    f"{LIN}::test_affine_model_scores_zero",
    f"{LIN}::test_vectorized_matches_naive",
]
SAMPLING = [
    f"{LIN}::test_mixing_weights",
    f"{LIN}::test_draw_tuples",
    f"{LIN_PROPS}::test_k_point_weights_are_dirichlet_one",
    f"{LIN_PROPS}::test_t_column_is_the_path_parameter",
]
EVALUATOR = TANGENT_STEP + [
    f"{LIN_PROPS}::test_collapsed_means_more_than_half_of_the_tuples",
    f"{LIN}::test_evaluator_matches_numpy_statistics",
    f"{API}::test_identical_points_and_constant_layers_are_excluded_and_counted",
]
SEED = [
    f"{LIN_PROPS}::test_training_seed_does_not_move_the_linearity_tuples",
    f"{API}::test_project_cnn_generic_path_matches_training_evaluator",
]
MEASURE = [
    f"{LIN_PROPS}::test_logits_layer_none_takes_the_raw_gap_on_the_outputs",
    f"{LIN_PROPS}::test_t_column_is_the_path_parameter",
    f"{LIN}::test_evaluator_leaves_out_the_step_at_that_t_and_counts_it",
    f"{API}::test_tuple_of_identical_points_scores_nothing_not_noise",
    f"{API}::test_raw_gap_matches_numpy",
]
LAYERS = [
    f"{LIN_PROPS}::test_layers_regex_is_searched_in_the_module_path",
    f"{API}::test_nested_submodules_in_call_order_match_adapter",
]
ANALYSIS = ["tests/test_analysis_properties.py", "tests/test_study_stats.py"]


@dataclasses.dataclass(frozen=True)
class Mutant:
  name: str
  path: str  # relative to the repository root
  old: str  # must occur exactly once
  new: str
  tests: tuple[str, ...]
  why: str  # the bug it stands for


def m(name, path, old, new, tests, why):
  return Mutant(name, path, old, new, tuple(tests), why)


TRAIN_PY = "mixlin_jax/train.py"
METRICS_PY = "mixlin_jax/linearity/metrics.py"
SAMPLING_PY = "mixlin_jax/linearity/sampling.py"
EVALUATOR_PY = "mixlin_jax/linearity/evaluator.py"
MEASURE_PY = "mixlin_jax/linearity/measure.py"
REPS_PY = "mixlin_jax/linearity/representations.py"
STATS_PY = "mixlin_jax/analysis/stats.py"
CLAIMS_PY = "mixlin_jax/analysis/claims.py"
STUDY_PY = "mixlin_jax/analysis/study.py"
TABLES_PY = "mixlin_jax/analysis/tables.py"
MUTANTS = [
    # -- the train step -----------------------------------------------------
    m("teacher_is_student", TRAIN_PY,
      "self.model.apply(state.teacher_variables(), x_u,",
      "self.model.apply(state.student_variables(), x_u,", STEP,
      "teacher forward uses the student's variables"),
    m("teacher_train_mode_bn", TRAIN_PY,
      "teacher_logits, _ = self.model.apply(state.teacher_variables(), x_u,\n"
      "                                           train=False)",
      "(teacher_logits, _), _ = self.model.apply(\n"
      "          state.teacher_variables(), x_u, train=True,\n"
      "          mutable=['batch_stats'])", STEP,
      "teacher uses batch statistics instead of its running averages"),
    m("targets_other_weights", TRAIN_PY,
      "targets = mixup.mix(jax.nn.one_hot(y_l, self.num_classes), tuples,\n"
      "                          weights)",
      "targets = mixup.mix(jax.nn.one_hot(y_l, self.num_classes), tuples,\n"
      "                          weights[:, ::-1])", STEP,
      "mixed labels use other weights than the mixed inputs"),
    m("teacher_targets_other_tuples", TRAIN_PY,
      "mixup.mix(teacher_probs, tuples, weights)",
      "mixup.mix(teacher_probs, *mixup.sample_mixing(\n"
      "              k_aug_u, x_u.shape[0], k, alpha))", STEP,
      "teacher targets mixed with other tuples than the student's inputs"),
    m("supervised_ignores_mixed_labels", TRAIN_PY,
      "sup = losses.soft_cross_entropy(logits_l, targets)",
      "sup = losses.cross_entropy(logits_l, y_l)", STEP,
      "supmix trains mixed inputs against the un-mixed labels"),
    m("teacher_on_mixed_inputs", TRAIN_PY,
      "jax.lax.stop_gradient(\n          mixup.mix(teacher_probs, tuples, weights))",
      "jax.lax.stop_gradient(jax.nn.softmax(self.model.apply(\n"
      "          state.teacher_variables(), x_mix, train=False)[0]))", STEP,
      "target is the teacher on the mixture, not the mixture of the "
      "teacher's predictions"),
    m("two_student_forwards", TRAIN_PY,
      "(logits, _), new_vars = self.model.apply(\n"
      "          {\"params\": params, \"batch_stats\": state.batch_stats}, inputs,\n"
      "          train=True, mutable=[\"batch_stats\"])",
      "apply = lambda x: self.model.apply(\n"
      "          {\"params\": params, \"batch_stats\": state.batch_stats}, x,\n"
      "          train=True, mutable=[\"batch_stats\"])\n"
      "      (logits, _), new_vars = apply(inputs[:num_l])\n"
      "      if cons_target is not None:\n"
      "        (logits_u, _), new_vars = apply(inputs[num_l:])\n"
      "        logits = jnp.concatenate([logits, logits_u])", STEP,
      "labelled and mixed images through the student separately: BatchNorm "
      "normalises each on its own"),
    m("weight_not_applied", TRAIN_PY,
      "total = sup + ramp * cons",
      "total = sup + cons", STEP,
      "the consistency weight is logged but not used"),
    m("key_folded_with_row", TRAIN_PY,
      "key = jax.random.fold_in(self.step_key, state.step)",
      "key = jax.random.fold_in(self.step_key, i)", STEP,
      "step key folded with the row in the epoch: draws repeat every epoch"),
    m("one_key_for_both_augmentations", TRAIN_PY,
      "k_aug_l, k_aug_u, k_mix = jax.random.split(key, 3)",
      "k_aug_l, k_aug_u, k_mix = jax.random.split(key, 3)\n"
      "    k_aug_u = k_aug_l", STEP,
      "labelled and unlabelled batches share one augmentation key"),
    m("row_is_epoch", TRAIN_PY,
      "i = state.step % self.steps_per_epoch",
      "i = state.step // self.steps_per_epoch", STEP,
      "batch row taken from the epoch number instead of the step in it"),
    m("rampup_by_row", TRAIN_PY,
      "state.step, self.rampup_steps)",
      "i, self.rampup_steps)", STEP,
      "ramp-up restarts every epoch"),
    m("no_rampup", TRAIN_PY,
      "self.rampup_steps = int(round(",
      "self.rampup_steps = 0 * int(round(", STEP,
      "consistency weight at full strength from step 0"),
    m("bn_stats_not_updated", TRAIN_PY,
      "batch_stats=aux[\"batch_stats\"],",
      "batch_stats=state.batch_stats,", STEP,
      "student's BatchNorm statistics never updated"),
    m("update_not_applied", TRAIN_PY,
      "params = optax.apply_updates(state.params, updates)",
      "params = state.params", STEP,
      "the new parameters are computed but not kept"),
    m("ema_from_old_params", TRAIN_PY,
      "ema_params=jax.tree.map(ema, state.ema_params, params)",
      "ema_params=jax.tree.map(ema, state.ema_params, state.params)", STEP,
      "EMA averages the parameters before the update"),
    m("ema_swapped", TRAIN_PY,
      "ema = lambda e, p: decay * e + (1.0 - decay) * p",
      "ema = lambda e, p: (1.0 - decay) * e + decay * p", STEP,
      "EMA formula with decay and 1 - decay swapped"),
    m("ema_bn_from_old_stats", TRAIN_PY,
      "ema_batch_stats=jax.tree.map(ema, state.ema_batch_stats,\n"
      "                                     aux[\"batch_stats\"])",
      "ema_batch_stats=jax.tree.map(ema, state.ema_batch_stats,\n"
      "                                     state.batch_stats)", STEP,
      "EMA BatchNorm statistics follow the student's old statistics"),
    m("always_flip", TRAIN_PY,
      "d.crop_padding, flip=d.flip)",
      "d.crop_padding, flip=True)", STEP,
      "augmentation flips even where data.flip is off (digits, SVHN)"),
    m("orders_ignore_epoch", TRAIN_PY,
      "key = jax.random.fold_in(self.data_key, epoch)",
      "key = self.data_key", STEP,
      "every epoch sees the batches in the same order"),
    # -- the optimizer ------------------------------------------------------
    m("decay_everything", TRAIN_PY,
      "lambda p: p.ndim > 1",
      "lambda p: p.ndim >= 1", STEP,
      "weight decay reaches biases and BatchNorm scales"),
    m("no_nesterov", TRAIN_PY,
      "nesterov=t.nesterov",
      "nesterov=False and t.nesterov", STEP,
      "plain momentum instead of Nesterov"),
    m("momentum_hardcoded", TRAIN_PY,
      "momentum=t.momentum or None",
      "momentum=0.9", STEP,
      "train.momentum ignored"),
    m("no_warmup_ramp", TRAIN_PY,
      "init_value=0.0, peak_value=t.learning_rate,",
      "init_value=t.learning_rate, peak_value=t.learning_rate,", STEP,
      "the warm-up stopped ramping (starts at the peak)"),
    m("cosine_too_short", TRAIN_PY,
      "decay_steps=max(total, 1), end_value=0.0)",
      "decay_steps=max(total - warmup, 1), end_value=0.0)", STEP,
      "cosine ends warm-up steps early (decay_steps read as excluding the "
      "warm-up)"),
    m("logged_rate_off_by_one", TRAIN_PY,
      "float(trainer.schedule(step - 1))",
      "float(trainer.schedule(step))", LOGGED_RATE + TRAIN,
      "the epoch logs the next step's rate, not the one its last step used"),
    # -- losses -------------------------------------------------------------
    m("consistency_sum_over_classes", "mixlin_jax/losses.py",
      "return jnp.mean((probs - target) ** 2)",
      "return jnp.mean(jnp.sum((probs - target) ** 2, axis=-1))",
      MIXUP + STEP, "consistency off by a factor of the class count"),
    m("rampup_linear_exponent", "mixlin_jax/losses.py",
      "jnp.exp(-5.0 * (1.0 - t) ** 2)",
      "jnp.exp(-5.0 * (1.0 - t))", MIXUP + STEP,
      "ramp-up exp(-5 (1 - t)) instead of exp(-5 (1 - t)^2)"),
    m("consistency_on_logits", "mixlin_jax/losses.py",
      "probs = jax.nn.softmax(student_logits.astype(jnp.float32))",
      "probs = student_logits.astype(jnp.float32)", MIXUP + STEP,
      "consistency compares logits with probabilities"),
    # -- mixup --------------------------------------------------------------
    m("tuple_slot0_not_identity", "mixlin_jax/mixup.py",
      "jnp.concatenate([identity[None], perms.astype(jnp.int32)], 0).T",
      "jnp.concatenate([perms[-1:], perms], 0).astype(jnp.int32).T",
      MIXUP + STEP, "slot 0 of a tuple is not the example itself"),
    m("weights_off_simplex", "mixlin_jax/mixup.py",
      "return e / jnp.sum(e, axis=1, keepdims=True)",
      "return e / jnp.sum(e, axis=0, keepdims=True)", MIXUP + STEP,
      "Dirichlet(1) weights normalised over the batch, not the tuple"),
    m("one_key_for_tuples_and_weights", "mixlin_jax/mixup.py",
      "k_perm, k_weights = jax.random.split(key)",
      "k_perm = k_weights = key", MIXUP + STEP,
      "tuples and weights drawn from one key"),
    # -- data ---------------------------------------------------------------
    m("crop_misses_an_edge", "mixlin_jax/data.py",
      "0, 2 * padding + 1, dtype=jnp.int32",
      "0, 2 * padding, dtype=jnp.int32", DATA + STEP,
      "random crops never use the last offset"),
    m("flips_rare", "mixlin_jax/data.py",
      "jax.random.bernoulli(flip_key, 0.5, (n,))",
      "jax.random.bernoulli(flip_key, 0.2, (n,))", DATA + STEP,
      "flips with probability 0.2 instead of 1/2"),
    m("normalize_multiplies", "mixlin_jax/data.py",
      "return ((x - mean) / std).astype(dtype)",
      "return ((x - mean) * std).astype(dtype)", DATA + STEP,
      "normalisation multiplies by the std"),
    m("same_order_every_pass", "mixlin_jax/data.py",
      "lambda p: jax.random.fold_in(key, p)",
      "lambda p: key", DATA + STEP,
      "a set cycled within an epoch repeats one order"),
    # -- configs ------------------------------------------------------------
    m("svhn_flipped", "mixlin_jax/config.py",
      "if dataset == \"svhn_cropped\":\n    c.data.flip = False",
      "if dataset == \"svhn_cropped\":\n    c.data.flip = True", CONFIG,
      "SVHN digits mirrored"),
    # -- the metrics: degenerate tuples -----------------------------------
    m("floor_eps_not_squared", METRICS_PY,
      "return max(float(rtol), eps * eps)",
      "return max(float(rtol), eps)", DEGENERATE,
      "bf16 floor eps instead of eps^2: drops tuples that bf16 resolves"),
    m("floor_min_not_max", METRICS_PY,
      "return max(float(rtol), eps * eps)",
      "return min(float(rtol), eps * eps)", DEGENERATE,
      "float32 floor eps^2 = 1e-14 instead of 1e-8: keeps rounding noise"),
    m("floor_of_float32_everywhere", METRICS_PY,
      "[degenerate_rtol_for(dtype, degenerate_rtol) for _, _, dtype in layers]",
      "[degenerate_rtol_for(jnp.float32, degenerate_rtol) for _, _, dtype in layers]",
      DEGENERATE,
      "a bf16 layer judged with the float32 floor"),
    m("spread_over_k_not_k2", METRICS_PY,
      "spread = jnp.sum(pair, axis=1) / (K * K)",
      "spread = jnp.sum(pair, axis=1) / K", DEGENERATE,
      "tuple spread from the pairwise sum off by a factor K"),
    m("k3_path_pair_is_the_tuple", METRICS_PY,
      "pair_degenerate = pair[:, 0] / 4 <= rtol * 0.5 * (hn[:, 0] + hn[:, 1])",
      "pair_degenerate = tuple_degenerate", DEGENERATE,
      "K > 2 tangent path judged by all K points, not its two end points"),
    m("tangent_step_rule_dropped", METRICS_PY,
      "degenerate[\"tangent_residual\"] = pair_degenerate[:, None] | step_degenerate",
      "degenerate[\"tangent_residual\"] = jnp.broadcast_to(\n"
      "        pair_degenerate[:, None], step_degenerate.shape)", TANGENT_STEP,
      "a path point on x_1's representation scores 8e10 or 0"),
    m("tangent_step_rule_absolute", METRICS_PY,
      "step_degenerate = sums[\"displacement\"] <= 2.0 * rtol[:, None] * scale",
      "step_degenerate = sums[\"displacement\"] <= 2.0 * rtol[:, None]", TANGENT_STEP,
      "negligible path step judged in absolute terms, not relative to size"),
    # -- the metrics: formulas ----------------------------------------------
    m("interp_den_without_product", METRICS_PY,
      "_contract_rows(weights[:, pi] * weights[:, pj], pair)",
      "_contract_rows(weights[:, pi], pair)", METRICS_CORE,
      "interpolation denominator without w_i w_j"),
    m("relative_over_second_moment", METRICS_PY,
      "_safe_ratio(num, sums[\"mixture\"], second)",
      "_safe_ratio(num, second, second)", METRICS_CORE,
      "relative error over E||h||^2 instead of ||m||^2"),
    m("raw_gap_never_log_probs", METRICS_PY,
      "log_probs=name in logits_layers,\n      )\n      if ext is not None",
      "log_probs=False,\n      )\n      if ext is not None", METRICS_CORE + MEASURE,
      "raw gap of a logits layer on the logits (K = 2, every forward)"),
    m("raw_gap_never_log_probs_generic", METRICS_PY,
      "log_probs=name in logits_layers,\n      )\n      for i, (name",
      "log_probs=False,\n      )\n      for i, (name", METRICS_CORE + MEASURE,
      "raw gap of a logits layer on the logits (K > 2 or no tangent residual)"),
    m("raw_gap_mixes_the_wrong_row", METRICS_PY,
      "lm = _mix(columns, [lp[0], lp[-1]])",
      "lm = _mix(columns, [lp[0], lp[1]])", METRICS_CORE + MEASURE,
      "K = 2 log-probabilities mixed with a mixture's row instead of x_2's"),
    m("x2_row_is_a_mixture", METRICS_PY,
      '"pair": sums["num"][:, W:],',
      '"pair": sums["num"][:, W - 1:W],', METRICS_CORE + DEGENERATE,
      "K = 2 pair distance taken from the last mixture's row, not x_2's"),
    # -- sampling -----------------------------------------------------------
    m("dirichlet_from_uniforms", SAMPLING_PY,
      ").standard_exponential(",
      ").random(", SAMPLING,
      "normalised uniforms instead of exponentials: not Dirichlet(1)"),
    m("dirichlet_squared", SAMPLING_PY,
      "w = e / e.sum(axis=1, keepdims=True)",
      "w = e**2 / (e**2).sum(axis=1, keepdims=True)", SAMPLING,
      "weights concentrated towards the corners (not uniform on the simplex)"),
    m("grid_weights_reversed", SAMPLING_PY,
      "return np.stack([1.0 - t, t], axis=1)",
      "return np.stack([t, 1.0 - t], axis=1)", SAMPLING,
      "K = 2 weights (t, 1 - t): t is w_1"),
    m("tuples_repeat_points", SAMPLING_PY,
      "idx += idx >= prev[:, c]",
      "idx += idx > prev[:, c]", SAMPLING,
      "a tuple may hold one example twice"),
    # -- the evaluator ------------------------------------------------------
    m("tuples_from_training_seed", "mixlin_jax/evaluation.py",
      "key=jax.random.PRNGKey(lin.seed),",
      "key=jax.random.PRNGKey(config.seed),", SEED,
      "linearity tuples follow the training seed: pairs on other points"),
    m("step_counted_only_if_every_t", EVALUATOR_PY,
      "any_rows = jnp.any(stacked == _LEFT_OUT, axis=1)",
      "any_rows = jnp.all(stacked == _LEFT_OUT, axis=1)",
      EVALUATOR, "a tuple left out at one t only is not counted"),
    m("step_counted_only_if_every_t_k3", EVALUATOR_PY,
      "[jnp.any(b == _LEFT_OUT, axis=1) for b in blocks]",
      "[jnp.all(b == _LEFT_OUT, axis=1) for b in blocks]",
      EVALUATOR, "K > 2: a tuple left out at one t only is not counted"),
    m("collapsed_at_half", EVALUATOR_PY,
      "if out[\"degenerate\"][name] > COLLAPSED_FRACTION * self.num_tuples",
      "if out[\"degenerate\"][name] >= COLLAPSED_FRACTION * self.num_tuples",
      EVALUATOR, "a layer flagged collapsed at exactly half, not more"),
    m("mask_not_applied", EVALUATOR_PY,
      "safe = jnp.where(mask, values, 0.0)",
      "safe = values", EVALUATOR,
      "left-out and padded tuples enter the mean"),
    m("left_out_values_kept", EVALUATOR_PY,
      "kept = valid & (values != _LEFT_OUT)",
      "kept = valid", EVALUATOR,
      "degenerate tuples enter the mean with the sentinel value"),
    m("stderr_without_sqrt_n", EVALUATOR_PY,
      "jnp.sqrt(m2 / jnp.maximum(n - 1, 1.0) / n)",
      "jnp.sqrt(m2 / jnp.maximum(n - 1, 1.0))", EVALUATOR,
      "standard deviation reported as the standard error"),
    # -- measure() and the representations -----------------------------------
    m("logits_layer_none_is_auto", MEASURE_PY,
      "elif logits_layer is None:\n    logits_layers = ()",
      "elif logits_layer is None:\n    logits_layers = None", MEASURE,
      "logits_layer=None still takes the output's log-probabilities"),
    m("table_t_is_w1", MEASURE_PY,
      "t = w[1] if k == 2 else np.nan",
      "t = w[0] if k == 2 else np.nan", MEASURE,
      "the table's t column holds w_1"),
    m("table_tangent_count_total", MEASURE_PY,
      "count = per_weight[i]",
      "count = stats[\"count\"]", MEASURE,
      "the table's tangent rows show the tuples kept at every t"),
    m("layers_regex_matched_at_start", REPS_PY,
      "pattern.search(\"/\".join(mdl.path))",
      "pattern.match(\"/\".join(mdl.path))", LAYERS,
      "layers= regex anchored at the path's start"),
    m("layers_regex_on_name_only", REPS_PY,
      "pattern.search(\"/\".join(mdl.path))",
      "pattern.search(mdl.name or \"\")", LAYERS,
      "layers= regex searched in the module's name, not its path"),
    # -- statistics ---------------------------------------------------------
    m("t_interval_n_dof", STATS_PY,
      "scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)",
      "scipy_stats.t.ppf(0.5 + confidence / 2, n)", ANALYSIS,
      "Student-t with n degrees of freedom"),
    m("t_interval_one_sided", STATS_PY,
      "scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)",
      "scipy_stats.t.ppf(confidence, n - 1)", ANALYSIS,
      "a one-sided quantile for a two-sided interval"),
    m("std_ddof_0", STATS_PY,
      "std = float(v.std(ddof=1))",
      "std = float(v.std())", ANALYSIS,
      "population std for the sample std"),
    m("paired_reversed", STATS_PY,
      "d = np.asarray([a - b for a, b in pairs], np.float64)",
      "d = np.asarray([b - a for a, b in pairs], np.float64)", ANALYSIS,
      "baseline - regime instead of regime - baseline"),
    # -- the claims' rules --------------------------------------------------
    m("supported_needs_more_than_half", CLAIMS_PY,
      "if sup * 2 >= n:",
      "if sup * 2 > n:", ANALYSIS,
      "supported needs more than half of the layers, not at least half"),
    m("contradicted_needs_more_than_half", CLAIMS_PY,
      "if con * 2 >= n:",
      "if con * 2 > n:", ANALYSIS,
      "contradicted needs more than half of the layers"),
    m("intermediate_drops_last_kept", CLAIMS_PY,
      "return [l for l in kept if l != layers[-1]]",
      "return kept[:-1]", ANALYSIS,
      "with the logits excluded, the last intermediate layer is dropped"),
    m("verdict_directions_swapped", CLAIMS_PY,
      "return SUPPORTED if d == claimed else CONTRADICTED",
      "return CONTRADICTED if d == claimed else SUPPORTED", ANALYSIS,
      "supported and contradicted swapped"),
    # -- the study aggregate (not its convergence part) ---------------------
    m("linear_by_construction_on_average", STUDY_PY,
      "worst = final.groupby(\"layer\")[\"value\"].max()",
      "worst = final.groupby(\"layer\")[\"value\"].mean()", ANALYSIS,
      "a layer excluded when its mean over runs, not every run, is tiny"),
    m("collapsed_at_any_epoch", STUDY_PY,
      "final = c[c[\"epoch\"] == data.final_epoch]",
      "final = c", ANALYSIS,
      "a layer collapsed at an earlier epoch only is left out of the claims"),
    m("collapsed_not_left_out", STUDY_PY,
      "left_out = excluded + sorted(collapsed)",
      "left_out = excluded", ANALYSIS,
      "collapsed layers stay in the claims"),
    m("run_value_is_median_over_weights", TABLES_PY,
      "\"value\": float(np.mean(values)) if values else math.nan,",
      "\"value\": float(np.median(values)) if values else math.nan,",
      ANALYSIS, "a run's value is the median over the mixing weights"),
    m("rows_t_is_w1", TABLES_PY,
      "t = float(w[1]) if k == 2 else None",
      "t = float(w[0]) if k == 2 else None", ANALYSIS,
      "tidy rows' t holds w_1"),
]


def copy_repository(dest: str, tests_from: str | None) -> None:
  ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.npz")
  for name in COPIED:
    shutil.copytree(os.path.join(ROOT, name), os.path.join(dest, name),
                    ignore=ignore, symlinks=True)
  if tests_from:
    shutil.rmtree(os.path.join(dest, "tests"))
    archive = subprocess.run(["git", "-C", ROOT, "archive", tests_from, "tests"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)


def available(dest: str, selection) -> list[str]:
  """The selected files and tests that exist in the copy (an older suite may
  lack some)."""
  out = []
  for item in selection:
    path, _, test = item.partition("::")
    full = os.path.join(dest, path)
    if not os.path.exists(full):
      continue
    if test:
      with open(full) as f:
        if not re.search(rf"^def {re.escape(test)}\(", f.read(), re.M):
          continue
    out.append(item)
  return out


def run_pytest(dest: str, args: list[str], timeout: float):
  env = dict(os.environ)
  env["PYTHONPATH"] = dest + os.pathsep + env.get("PYTHONPATH", "")
  env["PYTHONDONTWRITEBYTECODE"] = "1"
  cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
         "--no-header"] + args
  start = time.monotonic()
  try:
    proc = subprocess.run(cmd, cwd=dest, env=env, capture_output=True,
                          text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return "timeout", time.monotonic() - start, ""
  seconds = time.monotonic() - start
  failed = [l.split(" - ")[0].split()[1] for l in proc.stdout.splitlines()
            if l.startswith(("FAILED ", "ERROR "))]
  if proc.returncode == 0:
    return "survived", seconds, ""
  if proc.returncode == 1:
    return "killed", seconds, failed[0] if failed else "?"
  return "error", seconds, (proc.stdout + proc.stderr)[-400:].strip()


def check_copy_is_imported(dest: str) -> None:
  env = dict(os.environ, PYTHONPATH=dest + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  where = subprocess.run(
      [sys.executable, "-c", "import mixlin_jax; print(mixlin_jax.__file__)"],
      env=env, cwd=dest, capture_output=True, text=True, check=True
  ).stdout.strip()
  if not os.path.realpath(where).startswith(os.path.realpath(dest)):
    sys.exit(f"the copy is not what Python imports ({where}); aborting")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tests-from", help="git revision to take tests/ from")
  parser.add_argument("--only", help="comma-separated mutant names")
  parser.add_argument("--list", action="store_true", help="list the mutants")
  parser.add_argument("--no-baseline", action="store_true",
                      help="skip the unmutated run")
  parser.add_argument("--timeout", type=float, default=900,
                      help="seconds per pytest run")
  parser.add_argument(
      "--tests", help="comma-separated pytest node ids to run for every "
      "mutant instead of its own selection (does this test catch that bug?)")
  args = parser.parse_args()
  mutants = MUTANTS
  if args.only:
    names = set(args.only.split(","))
    unknown = names - {mu.name for mu in MUTANTS}
    if unknown:
      sys.exit(f"unknown mutants: {sorted(unknown)}")
    mutants = [mu for mu in MUTANTS if mu.name in names]
  if args.tests:
    mutants = [dataclasses.replace(mu, tests=tuple(args.tests.split(",")))
               for mu in mutants]
  if args.list:
    for mu in mutants:
      print(f"{mu.name:34s} {mu.path:24s} {mu.why}")
    return 0

  dest = tempfile.mkdtemp(prefix="mixlin_mutants_")
  results = []
  try:
    copy_repository(dest, args.tests_from)
    check_copy_is_imported(dest)
    suite = f"tests of {args.tests_from}" if args.tests_from else "current tests"
    print(f"Mutation check of {ROOT} with the {suite}, in {dest}", flush=True)
    if not args.no_baseline:
      union = available(dest, dict.fromkeys(
          t for mu in mutants for t in mu.tests))
      outcome, seconds, detail = run_pytest(dest, union, args.timeout)
      print(f"baseline (no mutation): {outcome} in {seconds:.0f}s {detail}",
            flush=True)
      if outcome != "survived":
        print("The unmutated suite does not pass; fix that first.")
        return 1
    for mu in mutants:
      target = os.path.join(dest, mu.path)
      with open(target) as f:
        original = f.read()
      tests = available(dest, mu.tests)
      if original.count(mu.old) != 1:
        outcome, seconds, detail = "stale", 0.0, "text not found once"
      elif not tests:
        outcome, seconds, detail = "survived", 0.0, "no test selected"
      else:
        with open(target, "w") as f:
          f.write(original.replace(mu.old, mu.new))
        try:
          outcome, seconds, detail = run_pytest(dest, tests, args.timeout)
        finally:
          with open(target, "w") as f:
            f.write(original)
      results.append((mu, outcome, seconds, detail))
      print(f"  {mu.name:34s} {outcome:8s} {seconds:5.0f}s  {detail}",
            flush=True)
  finally:
    shutil.rmtree(dest, ignore_errors=True)

  print()
  print(f"| {'mutant':34s} | {'file':10s} | {'result':8s} | {'s':>4s} | "
        "caught by / note")
  print(f"|{'-' * 36}|{'-' * 12}|{'-' * 10}|{'-' * 6}|{'-' * 20}")
  for mu, outcome, seconds, detail in results:
    short = os.path.basename(mu.path)
    note = detail.replace("tests/", "") if outcome == "killed" else mu.why
    print(f"| {mu.name:34s} | {short:10s} | {outcome:8s} | {seconds:4.0f} | "
          f"{note}")
  counted = [r for r in results if r[1] != "stale"]
  killed = sum(r[1] == "killed" for r in counted)
  print(f"\nScore: {killed}/{len(counted)} mutants killed"
        + (f" ({len(results) - len(counted)} stale)"
           if len(counted) < len(results) else ""))
  survivors = [r[0].name for r in counted if r[1] != "killed"]
  if survivors:
    print("Not killed: " + ", ".join(survivors))
  return 0


if __name__ == "__main__":
  sys.exit(main())
