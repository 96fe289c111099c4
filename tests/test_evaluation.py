"""Evaluators and the restore template built without a Trainer agree with
the Trainer's own (what analysis uses to recompute training's numbers)."""

import jax
import numpy as np
import pytest

import helpers
from mixlin_jax import evaluation
from mixlin_jax import parallel
from mixlin_jax import train


@pytest.fixture(scope="module")
def setup():
  config = helpers.tiny_config()
  split = train.load_split(config)
  mesh = parallel.make_mesh(jax.devices()[:1])
  trainer = train.Trainer(config, split, mesh)
  return config, split, mesh, trainer, trainer.init_state()


def test_state_template_matches_the_trainers_state(setup):
  config, split, mesh, _, state = setup
  template = train.state_template(config, split, mesh)
  assert jax.tree.structure(template) == jax.tree.structure(state)
  for t, s in zip(jax.tree.leaves(template), jax.tree.leaves(state)):
    assert (t.shape, t.dtype) == (s.shape, s.dtype)
    assert t.sharding == parallel.replicated(mesh)


def test_evaluators_from_host_split_equal_the_trainers(setup):
  config, split, mesh, trainer, state = setup
  variables = state.student_variables()
  d = trainer.data
  evaluators = evaluation.make_classification_evaluators(
      config, split, num_classes=split.num_classes, mesh=mesh)
  for name, (images, labels) in {"test": (d.x_test, d.y_test),
                                 "labelled": (d.x_labelled, d.y_labelled)
                                 }.items():
    expected = jax.device_get(trainer.evaluate(variables, images, labels))
    assert evaluators[name](variables) == {
        k: float(v) for k, v in expected.items()}, name

  from_split = evaluation.make_linearity_evaluator(
      config, split, num_classes=split.num_classes, mesh=mesh)
  from_trainer = train.make_linearity_evaluator(config, trainer)
  a, b = from_split(variables), from_trainer(variables)
  assert a["layers"] == b["layers"]
  for layer in a["layers"]:
    np.testing.assert_array_equal(a["interp_error"][layer]["mean"],
                                  b["interp_error"][layer]["mean"])
