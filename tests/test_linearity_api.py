"""``linearity.measure`` on any Flax model: same numbers as the evaluator,
clear errors, honest degenerate cases, one compilation per model (CPU)."""

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixlin_jax import linearity as L
from mixlin_jax.models import SmallCNN

import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# Models written as a user would: they return only logits.


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(12, name="hidden")(x.reshape(x.shape[0], -1)))
    return nn.Dense(5, name="head")(x)


class Block(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Dense(8, name="inner")(x)) + x


class Nested(nn.Module):
  """Submodules inside submodules, one of them called twice."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(8, name="stem")(x.reshape(x.shape[0], -1))
    x = Block(name="b1")(x)
    shared = Block(name="shared")
    x = shared(jnp.tanh(shared(x)))
    return nn.Dense(4, name="head")(x)


def _images(n=24, shape=(3, 3, 2), seed=0):
  return (
      np.random.default_rng(seed).normal(size=(n,) + shape).astype(np.float32)
  )


def _init(model, images, **kwargs):
  return model.init(jax.random.key(0), jnp.asarray(images[:1]), **kwargs)


SMALL = dict(num_tuples=9, batch_size=4, key=3)


def _assert_same_stats(record, legacy, mapping, rtol=1e-4):
  for metric in L.METRICS:
    for new_name, old_name in mapping.items():
      got, want = record[metric][new_name], legacy[metric][old_name]
      np.testing.assert_allclose(
          got["mean"],
          want["mean"],
          rtol=rtol,
          atol=1e-7,
          err_msg=f"{metric} {new_name}",
      )
      np.testing.assert_allclose(
          got["stderr"],
          want["stderr"],
          rtol=1e-3,
          atol=1e-7,
          err_msg=f"{metric} {new_name}",
      )


def _legacy(apply_fn, images, **kwargs):
  return L.LinearityEvaluator(apply_fn, images, num_points=2, **SMALL, **kwargs)


# ---------------------------------------------------------------------------
# Same numbers through the generic path as through the existing evaluator


def test_logits_only_model_matches_hand_written_adapter():
  images = _images()
  model = MLP()
  variables = _init(model, images)
  result = L.measure(model, variables, images, **SMALL)
  assert result.layers == ["hidden", "output"]  # module paths, call order

  def adapter(v, x):  # what a user had to write before
    out, state = model.apply(
        v, x, capture_intermediates=True, mutable=["intermediates"]
    )
    hidden = state["intermediates"]["hidden"]["__call__"][0]
    return out, {"00_hidden": hidden, "01_logits": out}

  legacy = _legacy(adapter, images)(variables)
  _assert_same_stats(
      result.record, legacy, {"hidden": "00_hidden", "output": "01_logits"}
  )


def test_nested_submodules_in_call_order_match_adapter():
  images = _images()
  model = Nested()
  variables = _init(model, images)
  result = L.measure(model, variables, images, **SMALL)
  assert result.layers == [
      "stem",
      "b1/inner",
      "b1",
      "shared/inner",
      "shared/inner#1",
      "shared",
      "shared#1",
      "output",
  ]

  # Filters: a path regex, module types, a Flax filter function.
  def names(layers):
    reps = L.Representations.of_model(model, layers=layers)
    return reps.layer_names(variables, images[:2])

  assert names(r"^(b1|stem)$") == ["stem", "b1", "output"]
  assert names(Block) == ["b1", "shared", "shared#1", "output"]
  assert names(lambda mdl, method: mdl.name == "inner") == [
      "b1/inner",
      "shared/inner",
      "shared/inner#1",
      "output",
  ]
  assert names(()) == ["output"]

  def adapter(v, x):
    out, state = model.apply(
        v, x, capture_intermediates=True, mutable=["intermediates"]
    )
    inter = state["intermediates"]
    shared = inter["shared"]["__call__"]
    return out, {
        "00_stem": inter["stem"]["__call__"][0],
        "01_b1": inter["b1"]["__call__"][0],
        "02_shared": shared[0],
        "03_shared1": shared[1],
        "04_logits": out,
    }

  legacy = _legacy(adapter, images)(variables)
  _assert_same_stats(
      result.record,
      legacy,
      {
          "stem": "00_stem",
          "b1": "01_b1",
          "shared": "02_shared",
          "shared#1": "03_shared1",
          "output": "04_logits",
      },
  )


def test_project_cnn_generic_path_matches_training_evaluator():
  images = _images(20, (8, 8, 1))
  cnn = SmallCNN(num_classes=10)
  variables = _init(cnn, images, train=False)
  result = L.measure(
      cnn,
      variables,
      images,
      layers=(),
      apply_kwargs={"train": False},
      logits_layer=("output/0", "output/1/04_logits"),
      **SMALL,
  )
  names = ["00_conv1", "01_conv2", "02_conv3", "03_pooled", "04_logits"]
  assert result.layers == ["output/0"] + [f"output/1/{n}" for n in names]
  legacy = _legacy(lambda v, x: cnn.apply(v, x, train=False), images)(
      variables
  )  # the train.py contract
  assert legacy["layers"] == names
  _assert_same_stats(
      result.record,
      legacy,
      {f"output/1/{n}": n for n in names} | {"output/0": "04_logits"},
  )


# ---------------------------------------------------------------------------
# Clear errors naming the argument


class BNModel(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(6)(x.reshape(x.shape[0], -1))
    return nn.BatchNorm(use_running_average=not train)(x)


class DropoutModel(nn.Module):

  @nn.compact
  def __call__(self, x, deterministic: bool = False):
    x = nn.Dense(6)(x.reshape(x.shape[0], -1))
    return nn.Dropout(0.5, deterministic=deterministic)(x)


class ScalarInside(nn.Module):
  """A submodule whose output has no batch axis."""

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(4, name="dense")(x.reshape(x.shape[0], -1))
    return h * Total(name="total")(h)


class Total(nn.Module):

  def __call__(self, h):
    return jnp.mean(h)


def test_bad_inputs_get_clear_errors():
  images = _images()
  mlp = MLP()
  v = _init(mlp, images)

  def raises(match, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
      L.measure(*args, **{**SMALL, **kwargs})

  # Weights off the simplex or of the wrong shape.
  raises(
      r"weights must lie on the simplex.*row 0 is \[0\.5, 0\.9\]",
      mlp,
      v,
      images,
      weights=[[0.5, 0.9]],
  )
  raises(
      r"weights must lie on the simplex", mlp, v, images, weights=[[1.2, -0.2]]
  )
  raises(
      r"weights must have shape \(num_weights, num_points=2\)",
      mlp,
      v,
      images,
      weights=[[0.2, 0.3, 0.5]],
  )
  # A model applied without its mode argument, or in training mode.
  bn = BNModel()
  vbn = bn.init(jax.random.key(0), images[:2], train=False)
  raises(r"model: calling it failed .*apply_kwargs", bn, vbn, images)
  raises(
      r"model: applying it writes to a variable collection.*BatchNorm",
      bn,
      vbn,
      images,
      apply_kwargs={"train": True},
  )
  raises(
      r"model: it asks for a random key.*dropout",
      DropoutModel(),
      _init(DropoutModel(), images, deterministic=True),
      images,
  )
  # Outputs that depend on the rest of the batch, hidden in a function.
  raises(
      r"model: an example's representations change when it is evaluated"
      r" together with other examples",
      lambda v_, x: bn.apply(v_, x, train=True, mutable=["batch_stats"])[0],
      vbn,
      images,
  )
  dropout = DropoutModel()
  raises(
      r"depend|change when it is evaluated together",
      lambda v_, x: dropout.apply(v_, x, rngs={"dropout": jax.random.key(1)}),
      _init(dropout, images, deterministic=True),
      images,
  )
  # An activation without a batch axis.
  raises(
      r"layer 'total' has shape \(\) .*no leading batch axis",
      ScalarInside(),
      _init(ScalarInside(), images),
      images,
  )
  raises(r"layer 'output' has shape \(\)", lambda v_, x: jnp.sum(x), {}, images)
  # Integer inputs: refused with the two ways out.
  raises(
      r"images: integer inputs \(int32\) cannot be mixed.*mix_at=.*"
      r"preprocess=",
      mlp,
      v,
      images.astype(np.int32),
  )
  # Unknown metrics, layers spec, NNX modules.
  raises(
      r"metrics must be a non-empty subset", mlp, v, images, metrics=("nope",)
  )
  raises(
      r"layers, mix_at and apply_kwargs need a flax.linen.Module",
      lambda v_, x: mlp.apply(v_, x),
      v,
      images,
      layers="hidden",
  )
  from flax import nnx  # pylint: disable=import-outside-toplevel

  raises(
      r"Flax NNX modules are not supported.*nnx.split",
      nnx.Linear(18, 3, rngs=nnx.Rngs(0)),
      {},
      images,
  )


class TokenModel(nn.Module):

  @nn.compact
  def __call__(self, tokens):
    e = nn.Embed(11, 6, name="embed")(tokens)
    h = nn.tanh(nn.Dense(7, name="mix")(e))
    return nn.Dense(3, name="head")(h.mean(axis=1))


class MaskedTokenModel(TokenModel):

  @nn.compact
  def __call__(self, tokens):
    e = nn.Embed(11, 6, name="embed")(tokens)
    return nn.Dense(3, name="head")((e * (tokens != 0)[..., None]).mean(axis=1))


def test_integer_inputs_mix_after_the_embedding():
  tokens = (
      np.random.default_rng(0).integers(1, 11, size=(16, 5)).astype(np.int32)
  )
  model = TokenModel()
  variables = _init(model, tokens)
  result = L.measure(model, variables, tokens, mix_at="embed", **SMALL)
  assert result.layers == ["mix", "output"]  # layers that see the mixture
  # Same numbers as mixing the embeddings by hand with an adapter.
  params = variables["params"]
  embedded = np.asarray(params["embed"]["embedding"])[tokens]

  def from_embedding(v, e):
    p = v["params"]
    mix = e @ p["mix"]["kernel"] + p["mix"]["bias"]
    logits = (
        jnp.tanh(mix).mean(axis=1) @ p["head"]["kernel"] + p["head"]["bias"]
    )
    return logits, {"00_mix": mix, "01_logits": logits}

  legacy = _legacy(from_embedding, embedded)(variables)
  _assert_same_stats(
      result.record, legacy, {"mix": "00_mix", "output": "01_logits"}
  )
  # A model that also reads the tokens elsewhere (a padding mask) is refused.
  masked = MaskedTokenModel()
  with pytest.raises(ValueError, match=r"reads its inputs elsewhere"):
    L.measure(masked, _init(masked, tokens), tokens, mix_at="embed", **SMALL)
  with pytest.raises(ValueError, match=r"mix_at='nope' is not the path"):
    L.measure(model, variables, tokens, mix_at="nope", **SMALL)


# ---------------------------------------------------------------------------
# Degenerate tuples: excluded, counted, flagged; never NaN, never huge


class Probe(nn.Module):
  """Layers with known degenerate behaviour, reported by their paths."""

  @nn.compact
  def __call__(self, x):
    flat = x.reshape(x.shape[0], -1)
    square = Square(name="square")(flat)  # h(-1) == h(1)
    constant = Constant(name="constant")(flat)  # same value for every input
    dead = Dead(name="dead")(flat)  # all zeros
    return nn.Dense(3, name="head")(flat) + 0 * (square + constant + dead).sum(
        -1, keepdims=True
    )


class Square(nn.Module):

  def __call__(self, x):
    return x * x


class Constant(nn.Module):

  def __call__(self, x):
    return jnp.zeros_like(x) + 2.5


class Dead(nn.Module):

  def __call__(self, x):
    return jax.nn.relu(-jnp.abs(x) - 1.0)


T_PROBE = 120  # tuples of the Probe tests (8 points: 28 pairs)


def _summary_finite(record, layer):
  for metric in L.METRICS:
    stats = record[metric][layer]
    if stats["count"]:
      assert np.all(np.isfinite(stats["mean"])), (metric, layer)
      assert max(stats["mean"]) < 1e3, (metric, layer, stats["mean"])


@pytest.mark.parametrize("K", [2, 3])
def test_identical_points_and_constant_layers_are_excluded_and_counted(K):
  # Eight points: 4..6 repeat 0..2 (identical pairs) and 7 is -3, a pair
  # that only the square layer maps onto one point.
  rng = np.random.default_rng(0)
  images = rng.normal(size=(8, 1, 1, 2)).astype(np.float32)
  images[4:7] = images[0:3]
  images[7] = -images[3]
  model = Probe()
  variables = _init(model, images)
  ev = L.LinearityEvaluator(
      L.Representations.of_model(model),
      images,
      num_points=K,
      num_tuples=T_PROBE,
      batch_size=T_PROBE,
      key=1,
      grid=(0.3, 0.7),
      num_dirichlet=2,
  )
  record = ev(variables)
  tuples = [set(t) for t in ev.tuples.tolist()]
  identical = [{0, 4}, {1, 5}, {2, 6}]
  same = sum(t in identical for t in tuples)
  assert (same > 0) == (K == 2)  # K = 3: a third, different point
  # Identical points: excluded from every normalized metric at every layer
  # (they are identical everywhere), counted, kept by the raw gap.
  # The tangent residual's path runs from the first point to the second:
  # it is degenerate when those two coincide (for K = 3 too).
  path_same = sum(set(t[:2]) in identical for t in ev.tuples.tolist())
  for metric in L.NORMALIZED_METRICS:
    expected = path_same if metric == "tangent_residual" else same
    head = record[metric]["output"]
    assert head["degenerate"] == expected
    assert head["count"] == T_PROBE - expected
  assert record["degenerate"]["output"] == same
  assert record["raw_gap"]["output"]["degenerate"] == 0
  assert record["raw_gap"]["output"]["count"] == T_PROBE
  # The square layer also merges x and -x: those tuples are excluded too
  # (their numerator is not zero: they would score ~1e9).
  merged = sum(t in identical + [{3, 7}] for t in tuples)
  assert (merged > same) == (K == 2)
  assert record["interp_error"]["square"]["degenerate"] == merged
  # Constant and dead layers: every tuple degenerate, nothing scored,
  # flagged as collapsed; not "perfectly linear".
  for layer in ("constant", "dead"):
    assert record["degenerate"][layer] == T_PROBE
    stats = record["interp_error"][layer]
    assert stats["count"] == 0 and stats["degenerate"] == T_PROBE
    assert np.all(np.isnan(stats["mean"]))  # undefined, not 0
  assert record["collapsed_layers"] == ["constant", "dead"]
  for layer in record["layers"]:
    _summary_finite(record, layer)
  # A constant layer's raw gap is float32 rounding of w_1 + w_2 = 1.
  assert max(record["raw_gap"]["constant"]["mean"]) < 1e-5


def test_tuple_of_identical_points_scores_nothing_not_noise():
  cnn = SmallCNN(num_classes=10)
  # 20 copies of one example: the shapes and options of the CNN test
  # above, so the compiled program is shared.
  images = np.repeat(_images(1, (8, 8, 1)), 20, axis=0)
  variables = _init(cnn, images, train=False)
  result = L.measure(
      cnn,
      variables,
      images,
      layers=(),
      apply_kwargs={"train": False},
      logits_layer=("output/0", "output/1/04_logits"),
      **SMALL,
  )
  table = result.table
  normalized = table[table.metric != "raw_gap"]
  assert (normalized["count"] == 0).all() and (
      normalized["degenerate"] == 9
  ).all()
  assert sorted(result.collapsed_layers) == sorted(result.layers)
  raw = table[table.metric == "raw_gap"]
  assert np.all(np.isfinite(raw["mean"])) and raw["mean"].max() < 1e-4


def test_collapsed_layer_is_flagged_in_summary_table_and_figure():
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  images = _images(8, (1, 1, 2))
  model = Probe()
  # The evaluator settings of the test above: one shared compilation.
  result = L.measure(
      model,
      _init(model, images),
      images,
      num_tuples=T_PROBE,
      batch_size=T_PROBE,
      key=1,
      grid=(0.3, 0.7),
  )
  summary = result.summary()
  assert (
      summary.loc["dead", "collapsed"] and summary.loc["constant", "collapsed"]
  )
  assert not summary.loc["output", "collapsed"]
  assert np.isnan(summary.loc["dead", "interp_error"])
  assert result.table.query("layer == 'dead'")["collapsed"].all()
  fig = result.plot()
  texts = [t.get_text() for ax in fig.axes for t in ax.texts]
  assert texts.count("collapsed") == 2 * len(L.METRICS)


# ---------------------------------------------------------------------------
# Compilation: once per (model, shapes, metrics), whatever the wrapper


def test_one_compilation_for_different_wrappers_of_one_model():
  images = _images()
  model = MLP()
  variables = _init(model, images)

  def as_def(v, x):
    return model.apply(v, x)

  def make_lambda():
    return lambda v, x: model.apply(v, x)

  metrics = ("interp_error", "raw_gap")  # a small program: fast to compile
  first = L.measure(make_lambda(), variables, images, metrics=metrics, **SMALL)
  with helpers.LoweringCounter() as lowerings:
    for wrapper in (make_lambda(), as_def, make_lambda()):
      again = L.measure(wrapper, variables, images, metrics=metrics, **SMALL)
      assert again.record == first.record
  assert lowerings.count == 0  # no new wrapper compiled (or even traced)
  # A Flax module equal by value (a new instance) is the same model.
  L.measure(model, variables, images, metrics=metrics, **SMALL)
  with helpers.LoweringCounter() as lowerings:
    L.measure(MLP(), variables, images, metrics=metrics, **SMALL)
  assert lowerings.count == 0
  # A different computation does compile.
  with helpers.LoweringCounter() as lowerings:
    L.measure(
        lambda v, x: model.apply(v, x) * 2.0,
        variables,
        images,
        metrics=metrics,
        **SMALL,
    )
  assert lowerings.count == 1


def test_same_computation_keys():
  scale = 3.0
  model = MLP()
  a = L.SameComputation(lambda v, x: model.apply(v, x) * scale)
  b = L.SameComputation(lambda v, x: model.apply(v, x) * scale)
  c = L.SameComputation(lambda v, x: model.apply(v, x) * 2.0)
  arr1, arr2 = jnp.ones(3), jnp.ones(3)
  d1 = L.SameComputation(lambda v, x: x + arr1)
  d2 = L.SameComputation(lambda v, x: x + arr2)
  assert a == b and hash(a) == hash(b)
  assert a != c and d1 != d2  # different constants; arrays by identity
  assert L.SameComputation(model.apply) == L.SameComputation(MLP().apply)


# ---------------------------------------------------------------------------
# The raw gap against a plain numpy computation


def test_raw_gap_matches_numpy():
  images = _images(10)
  model = MLP()
  variables = _init(model, images)
  result = L.measure(
      model, variables, images, num_tuples=7, key=5, metrics=("raw_gap",)
  )
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])

  def forward(x):
    hidden = x.reshape(len(x), -1) @ p["hidden"]["kernel"] + p["hidden"]["bias"]
    logits = np.tanh(hidden) @ p["head"]["kernel"] + p["head"]["bias"]
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    return {"hidden": hidden, "output": log_probs}  # logits -> log-probs

  tuples = L.draw_tuples(5, len(images), 7, 2)
  x = images.astype(np.float64)[tuples]  # (T, 2, ...)
  for i, (w1, w2) in enumerate(result.record["weights"]):
    mixed = forward(w1 * x[:, 0] + w2 * x[:, 1])
    first, second = forward(x[:, 0]), forward(x[:, 1])
    for layer in ("hidden", "output"):
      gap = np.linalg.norm(
          mixed[layer] - (w1 * first[layer] + w2 * second[layer]), axis=-1
      )
      row = result.table.query("layer == @layer and weight_index == @i")
      np.testing.assert_allclose(
          row["mean"].item(), gap.mean(), rtol=2e-3, atol=1e-6, err_msg=layer
      )
      np.testing.assert_allclose(
          row["stderr"].item(),
          gap.std(ddof=1) / np.sqrt(7),
          rtol=2e-2,
          atol=1e-6,
      )


# ---------------------------------------------------------------------------
# The example of docs/measure.md, exactly as written, and what it shows


def _readme_example() -> str:
  with open(os.path.join(ROOT, "docs", "measure.md")) as f:
    page = f.read()
  blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
  assert len(blocks) == 1, "docs/measure.md must hold one python example"
  return blocks[0]


def test_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(_readme_example(), "docs/measure.md", "exec"), namespace)  # pylint: disable=exec-used
  printed = capsys.readouterr().out
  assert "interp_error" in printed and "output" in printed
  assert os.path.exists(tmp_path / "linearity.png")
  result = namespace["result"]
  assert result.collapsed_layers == []
  assert set(result.table.metric) == set(L.METRICS)


def test_first_call_traces_the_model_once_per_forward():
  """measure()'s first call traces the model twice to validate its layers
  (batches of 2 and 3) and once per forward it compiles (the JVP's and the
  batched one): no trace for the scan's shapes, no forward of its own for
  the batch-dependence check (each extra forward is as much XLA compile
  time again as the model's own).  The previous evaluator traced it 8
  times.  A second call compiles nothing."""
  traces = []

  class Traced(nn.Module):

    @nn.compact
    def __call__(self, x):
      traces.append(x.shape[0])
      x = nn.relu(nn.Dense(7, name="hidden")(x.reshape(x.shape[0], -1)))
      return nn.Dense(3, name="head")(x)

  images = _images()
  model = Traced()
  variables = model.init(jax.random.key(0), images[:1])
  traces.clear()
  first = L.measure(model, variables, images, **SMALL)
  assert sorted(traces)[:2] == [2, 3] and len(traces) == 4, traces
  with helpers.LoweringCounter() as lowerings:
    again = L.measure(model, variables, images, **SMALL)
  assert lowerings.count == 0
  assert again.record == first.record


def test_call_restores_the_garbage_collector():
  """The collector is paused only inside a call: on again after it, after
  a call that raises, and left off for a caller who turned it off."""
  import gc

  class Mlp(nn.Module):

    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(7, name="hidden")(x.reshape(x.shape[0], -1)))
      return nn.Dense(3, name="head")(x)

  images = _images()
  model = Mlp()
  variables = model.init(jax.random.key(0), images[:1])
  assert gc.isenabled()
  L.measure(model, variables, images, **SMALL)
  assert gc.isenabled()
  with pytest.raises(ValueError, match="nothere"):
    L.measure(model, variables, images, logits_layer="nothere", **SMALL)
  assert gc.isenabled()
  gc.disable()
  try:
    L.measure(model, variables, images, **SMALL)
    assert not gc.isenabled()
  finally:
    gc.enable()
