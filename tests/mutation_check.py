r"""Mutation check: which plausible bugs in the train step does the suite catch?

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
