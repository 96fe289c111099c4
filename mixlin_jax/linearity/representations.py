"""Any Flax model as the function the linearity metrics need.

The metrics need ``(variables, x) -> {layer name: (N, ...) array}``: every
representation to compare, in network order, with a batch axis, for examples
that do not influence each other.  :class:`Representations` builds it

* from a Flax linen ``Module`` that returns whatever it returns: the outputs
  of its submodules come from Flax's own ``capture_intermediates`` (a filter
  chooses which: a path regex, module types, or a Flax filter function),
  named by module path ("block1/conv2") in the order the calls completed,
  followed by the model's own output ("output");
* from an apply function ``(variables, x) -> anything``: every array in what
  it returns is a layer ("output", or "output/1/h2" for nested results);
* from the project's ``(logits, {name: activation})`` functions
  (:meth:`Representations.of_activations_fn`, the contract of
  ``LinearityEvaluator``), layers sorted by name.

It is hashable by value, so it is a static ``jax.jit`` argument, and two
equal instances share one compilation.  Equality of modules is Flax's
(dataclass fields); equality of functions is :class:`SameComputation`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import re
import types
from typing import Any, Callable, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "OUTPUT",
    "LayerSpec",
    "Representations",
    "SameComputation",
    "as_representations",
    "layer_specs",
]

#: Name of the model's own output among the layers.
OUTPUT = "output"

# Functions nested deeper than this in closures are keyed by identity.
_MAX_DEPTH = 4


# ---------------------------------------------------------------------------
# Hashing callables by what they compute


class _Same:
  """Identity key that keeps its object alive (so its id is never reused)."""

  __slots__ = ("obj",)

  def __init__(self, obj):
    self.obj = obj

  def __eq__(self, other):
    return isinstance(other, _Same) and other.obj is self.obj

  def __hash__(self):
    return id(self.obj)


def _code_key(code: types.CodeType):
  consts = tuple(
      _code_key(c) if isinstance(c, types.CodeType) else (type(c), c)
      for c in code.co_consts
  )
  return (
      code.co_code,
      consts,
      code.co_names,
      code.co_varnames,
      code.co_freevars,
      code.co_argcount,
      code.co_kwonlyargcount,
      code.co_flags,
  )


def _global_names(code: types.CodeType):
  names = set(code.co_names)
  for c in code.co_consts:
    if isinstance(c, types.CodeType):
      names |= _global_names(c)
  return names


def _value_key(value, depth: int):
  if isinstance(
      value,
      (
          types.FunctionType,
          types.MethodType,
          functools.partial,
          SameComputation,
      ),
  ):
    return ("callable", _callable_key(value, depth + 1))
  if isinstance(value, (jax.Array, np.ndarray)):
    return _Same(value)
  try:
    hash(value)
  except TypeError:
    return _Same(value)
  return ("value", type(value), value)


def _callable_key(fn, depth: int = 0):
  if depth > _MAX_DEPTH:
    return _Same(fn)
  if isinstance(fn, SameComputation):
    return fn.key
  if isinstance(fn, functools.partial):
    return (
        "partial",
        _callable_key(fn.func, depth + 1),
        tuple(_value_key(a, depth) for a in fn.args),
        tuple(
            sorted((k, _value_key(v, depth)) for k, v in fn.keywords.items())
        ),
    )
  if inspect.ismethod(fn):
    return (
        "method",
        _callable_key(fn.__func__, depth + 1),
        _value_key(fn.__self__, depth),
    )
  if isinstance(fn, types.FunctionType):
    code = fn.__code__
    cells = []
    for cell in fn.__closure__ or ():
      try:
        cells.append(_value_key(cell.cell_contents, depth))
      except ValueError:  # empty cell
        cells.append(("empty",))
    used = sorted(n for n in _global_names(code) if n in fn.__globals__)
    return (
        "function",
        _code_key(code),
        tuple(cells),
        tuple((n, _value_key(fn.__globals__[n], depth)) for n in used),
        _value_key(fn.__defaults__, depth),
        _value_key(tuple(sorted((fn.__kwdefaults__ or {}).items())), depth),
    )
  return ("object", _value_key(fn, depth))


class SameComputation:
  """A callable whose hash and equality follow what it computes.

  ``jax.jit`` caches static arguments by hash and equality, and a Python
  function hashes by identity: every fresh ``lambda v, x: model.apply(v, x)``
  is a new cache entry and a new compilation (about a second even for the
  small CNN).  Two ``SameComputation`` are equal when their functions have
  the same bytecode and constants and capture equal values through closures,
  defaults, ``functools.partial`` arguments, bound ``self`` and the globals
  they name: Flax modules compare by their fields, other hashable values by
  value, arrays and unhashable objects by identity.  Like ``jax.jit`` itself,
  this assumes that what a function reads through globals or closures does
  not change between calls.
  """

  __slots__ = ("fn", "key", "_hash")

  def __init__(self, fn: Callable):
    if isinstance(fn, SameComputation):
      fn = fn.fn
    self.fn = fn
    self.key = _callable_key(fn)
    self._hash = hash(self.key)

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)

  def __eq__(self, other):
    return isinstance(other, SameComputation) and self.key == other.key

  def __hash__(self):
    return self._hash

  def __repr__(self):
    return f"SameComputation({self.fn!r})"


# ---------------------------------------------------------------------------
# Naming the arrays of a (possibly nested) result, in order


def _is_array(v) -> bool:
  return hasattr(v, "shape") and hasattr(v, "dtype")


def _named_leaves(value, name: str):
  """``[(name, array)]`` of a result; dicts in insertion (not sorted) order."""
  if value is None:
    return []
  if _is_array(value):
    return [(name, value)]
  if isinstance(value, Mapping):
    return [
        leaf
        for k, v in value.items()
        for leaf in _named_leaves(v, f"{name}/{k}")
    ]
  if isinstance(value, (tuple, list)):
    return [
        leaf
        for i, v in enumerate(value)
        for leaf in _named_leaves(v, f"{name}/{i}")
    ]
  leaves = jax.tree_util.tree_flatten_with_path(value)[0]
  if len(leaves) == 1 and leaves[0][1] is value:
    return [(name, value)]  # a scalar or other leaf: validated later
  return [
      (f"{name}/{jax.tree_util.keystr(p, simple=True, separator='/')}", v)
      for p, v in leaves
  ]


def _module_name(path: Sequence[str], method: str, call: int) -> str:
  name = "/".join(path)
  if method != "__call__":
    name += f".{method}"
  return name + (f"#{call}" if call else "")


def _captured_layers(intermediates, path=()):
  """Flax's ``intermediates`` collection as ``[(path, name, value)]``.

  Flax sows each captured output when the call returns and Python dicts
  keep insertion order, so a depth-first walk in insertion order lists the
  outputs in the order the calls completed (a module called several times
  lists all its calls where it first completed).
  """
  out = []
  for key, value in intermediates.items():
    if isinstance(value, Mapping):
      out.extend(_captured_layers(value, path + (key,)))
    else:  # a method name -> tuple of outputs, one per call
      for call, y in enumerate(value):
        out.append((path, key, _module_name(path, key, call), y))
  return out


# ---------------------------------------------------------------------------
# Errors that say what to change


@contextlib.contextmanager
def _explained_model_errors():
  """Turns Flax's errors about a model applied in training mode into ones
  that name the argument to change."""
  try:
    yield
  except flax.errors.ModifyScopeVariableError as e:
    raise ValueError(
        "model: applying it writes to a variable collection ("
        + str(e)
        + "). A model that updates statistics while it runs (BatchNorm in "
        "training mode) gives each example an output that depends on the "
        "rest of the batch, which the metrics cannot use: apply it in "
        "inference mode, e.g. apply_kwargs={'train': False}, or build it "
        "with use_running_average=True."
    ) from e
  except flax.errors.InvalidRngError as e:
    raise ValueError(
        "model: it asks for a random key (" + str(e) + "): dropout or "
        "another random layer is enabled, so its outputs are random and "
        "depend on the batch. Apply it deterministically, e.g. "
        "apply_kwargs={'deterministic': True} or {'train': False}."
    ) from e
  except TypeError as e:
    if "required" in str(e) and "argument" in str(e):
      raise ValueError(
          f"model: calling it failed ({e}). Pass the arguments it needs "
          "besides the input with apply_kwargs, e.g. apply_kwargs={'train': "
          "False} for this project's models."
      ) from e
    raise


def _nnx_module(model) -> bool:
  return any(c.__module__.startswith("flax.nnx") for c in type(model).__mro__)


# ---------------------------------------------------------------------------
# Representations


def _capture_filter(select) -> Callable[[nn.Module, str], bool]:
  """Flax ``capture_intermediates`` filter for the ``layers`` argument."""
  if select is None:
    return lambda mdl, method: method == "__call__"
  if isinstance(select, str):
    pattern = re.compile(select)
    return lambda mdl, method: (
        method == "__call__" and pattern.search("/".join(mdl.path)) is not None
    )
  if isinstance(select, tuple) and all(isinstance(t, type) for t in select):
    return lambda mdl, method: method == "__call__" and isinstance(mdl, select)
  return select  # a Flax filter function (mdl, method_name) -> bool


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """A layer as the metrics see it: name, per-example shape, dtype."""

  name: str
  shape: tuple
  dtype: Any


@dataclasses.dataclass(frozen=True)
class Representations:
  """``(variables, x) -> {layer: (N, ...)}`` in network order; hashable.

  Build with :meth:`of_model` or :meth:`of_activations_fn`; see the module
  docstring.  Fields are static facts only (the module, functions wrapped
  in :class:`SameComputation`, hashable options), never arrays.
  """

  module: nn.Module | None = None
  apply_fn: SameComputation | None = None
  apply_kwargs: tuple = ()
  select: Any = None
  activations_dict: bool = False
  mix_at: str | None = None
  token_shape: tuple | None = None
  token_dtype: str | None = None

  # -- construction ---------------------------------------------------------

  @classmethod
  def of_model(
      cls, model, *, layers=None, apply_kwargs=None, mix_at: str | None = None
  ) -> "Representations":
    """The representations of a Flax linen ``Module`` or an apply function.

    Args:
      model: a ``flax.linen.Module`` (applied as ``model.apply(variables, x,
        **apply_kwargs)``), or a function ``(variables, x) -> anything``.
      layers: which submodule outputs to capture (Module only): None for
        every submodule's ``__call__``; a regex searched in the module path
        ("block1/conv2"); a type or tuple of types (e.g. ``nn.Dense``); a
        Flax filter ``(module, method_name) -> bool``; or ``()`` for none.
        The model's output is always a layer ("output").
      apply_kwargs: extra keyword arguments of the model's ``__call__``
        (e.g. ``{"train": False}``).
      mix_at: mix at the output of this submodule (its path, e.g. "embed")
        instead of at the input: see ``measure``.
    """
    if isinstance(model, Representations) and (
        layers is None and apply_kwargs is None and mix_at is None
    ):
      return model
    if _nnx_module(model):
      raise ValueError(
          "model: Flax NNX modules are not supported. Wrap the model with "
          "flax.nnx.bridge.ToLinen to make it a linen Module, or pass a "
          "function (state, x) -> representations, e.g. with graphdef, "
          "state = nnx.split(model): lambda state, x: "
          "nnx.merge(graphdef, state)(x), and measure(fn, state, images)."
      )
    kwargs = dict(apply_kwargs or {})
    clash = sorted(set(kwargs) & {"mutable", "capture_intermediates", "method"})
    if clash:
      raise ValueError(
          f"apply_kwargs: {clash} are set by the metrics "
          "themselves; remove them"
      )
    try:  # static facts of the compiled program: they must be hashable
      hash(tuple(sorted(kwargs.items())))
    except TypeError:
      raise ValueError(
          "apply_kwargs: values must be hashable constants such as "
          f"train=False, got {kwargs!r}; pass arrays through an apply "
          "function instead"
      ) from None
    if isinstance(layers, type):
      layers = (layers,)
    elif isinstance(layers, list):
      layers = tuple(layers)
    if layers is not None and not isinstance(layers, (str, tuple)):
      if not callable(layers):
        raise ValueError(
            "layers must be None, a regex string, a module type or tuple of "
            f"types, a Flax filter function or (), got {layers!r}"
        )
      layers = SameComputation(layers)
    if isinstance(layers, tuple) and not all(
        isinstance(t, type) for t in layers
    ):
      raise ValueError(
          f"layers: a tuple must hold module types, got {layers!r}"
      )
    if isinstance(model, nn.Module):
      return cls(
          module=model,
          apply_kwargs=tuple(sorted(kwargs.items())),
          select=layers,
          mix_at=mix_at,
      )
    if not callable(model):
      raise ValueError(
          "model must be a flax.linen.Module or a function "
          f"(variables, x) -> outputs, got {type(model)}"
      )
    if layers is not None or mix_at is not None or kwargs:
      raise ValueError(
          "layers, mix_at and apply_kwargs need a flax.linen.Module as "
          "model; an apply function reports the arrays it returns, so "
          "return the representations you want from it"
      )
    return cls(apply_fn=SameComputation(model))

  @classmethod
  def of_activations_fn(cls, apply_fn: Callable) -> "Representations":
    """``apply_fn(variables, x) -> (logits, {name: activation})``: the
    activations, sorted by name (the ``LinearityEvaluator`` contract)."""
    return cls(apply_fn=SameComputation(apply_fn), activations_dict=True)

  def with_tokens(self, shape, dtype) -> "Representations":
    """The same, taking mixing-space points for integer inputs of ``shape``."""
    return dataclasses.replace(
        self, token_shape=tuple(shape), token_dtype=jnp.dtype(dtype).name
    )

  # -- evaluation -----------------------------------------------------------

  def __call__(self, variables, x) -> dict:
    """``{layer: (N, ...)}`` in network order (insertion order)."""
    if self.apply_fn is not None:
      out = self.apply_fn(variables, x)
      if not self.activations_dict:
        return dict(_named_leaves(out, OUTPUT))
      if not (
          isinstance(out, (tuple, list))
          and len(out) == 2
          and isinstance(out[1], Mapping)
      ):
        raise ValueError(
            "apply_fn must return (logits, {layer: activation}) (the "
            "LinearityEvaluator contract), got "
            f"{jax.tree.map(jnp.shape, out)}. To measure a model that "
            "returns anything else, use linearity.measure(model, ...)."
        )
      acts = out[1]
      return {name: acts[name] for name in sorted(acts)}
    return self._module_layers(variables, x)

  def _apply(self, variables, x, capture):
    if self.mix_at is None:
      inputs, replace = x, contextlib.nullcontext()
    else:
      inputs = jnp.zeros((x.shape[0],) + self.token_shape, self.token_dtype)
      replace = nn.intercept_methods(
          functools.partial(
              _replace_output, path=tuple(self.mix_at.split("/")), value=x
          )
      )
    variables = {
        k: v for k, v in dict(variables).items() if k != "intermediates"
    }
    with _explained_model_errors(), replace:
      return self.module.apply(
          variables,
          inputs,
          capture_intermediates=capture,
          mutable=["intermediates"],
          **dict(self.apply_kwargs),
      )

  def _module_layers(self, variables, x) -> dict:
    wanted = _capture_filter(self.select)
    mix_path = None if self.mix_at is None else tuple(self.mix_at.split("/"))

    def capture(mdl, method):
      if mdl.path == ():
        return False  # the model's output is taken from its return value
      if mix_path is not None and mdl.path == mix_path:
        return method == "__call__"  # to know where mixing happens
      return wanted(mdl, method)

    out, state = self._apply(variables, x, capture)
    captured = _captured_layers(state.get("intermediates", {}))
    if mix_path is not None:
      where = [
          i
          for i, (path, method, _, _) in enumerate(captured)
          if path == mix_path and method == "__call__"
      ]
      if not where:
        raise ValueError(
            f"mix_at={self.mix_at!r} is not the path of a "
            "submodule the model calls"
        )
      captured = captured[where[0] + 1 :]  # layers that see the mixture
    outputs = _named_leaves(out, OUTPUT)
    output_ids = {id(v) for _, v in outputs}
    layers = {}
    for _, _, name, y in captured:
      for leaf_name, leaf in _named_leaves(y, name):
        if id(leaf) not in output_ids:  # the output is reported as "output"
          layers[leaf_name] = leaf
    layers.update(outputs)
    return layers

  def layer_names(self, variables, inputs) -> list[str]:
    """The layers measured for a batch like ``inputs``, in network order,
    without running or compiling anything (an abstract trace)."""
    inputs = jnp.asarray(inputs)
    return [
        spec.name
        for spec in layer_specs(
            self, variables, jax.ShapeDtypeStruct(inputs.shape, inputs.dtype)
        )
    ]

  def embed(self, variables, tokens):
    """The ``mix_at`` layer's output for integer ``tokens`` (mixing space)."""
    mix_path = tuple(self.mix_at.split("/"))
    _, state = self.unmixed()._apply(  # pylint: disable=protected-access
        variables,
        tokens,
        lambda mdl, method: mdl.path == mix_path and method == "__call__",
    )
    captured = _captured_layers(state.get("intermediates", {}))
    if not captured:
      raise ValueError(
          f"mix_at={self.mix_at!r} is not the path of a "
          "submodule the model calls"
      )
    return captured[0][3]

  def unmixed(self) -> "Representations":
    """The same layers for the model's own inputs (no ``mix_at``)."""
    return dataclasses.replace(
        self, mix_at=None, token_shape=None, token_dtype=None
    )


def _replace_output(next_fun, args, kwargs, context, *, path, value):
  if context.module.path == path and context.method_name == "__call__":
    return value
  return next_fun(*args, **kwargs)


def as_representations(model) -> Representations:
  """``model`` if it is :class:`Representations`, else the activations-dict
  contract of ``LinearityEvaluator`` (``(logits, {name: act})``)."""
  if isinstance(model, Representations):
    return model
  if isinstance(model, nn.Module) or _nnx_module(model):
    return Representations.of_model(model)
  return Representations.of_activations_fn(model)


# ---------------------------------------------------------------------------
# Layer specs, validated once per (representations, shapes)


def _abstract(tree):
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), tree
  )


@functools.lru_cache(maxsize=256)
def _layer_specs_cached(reps, treedef, leaves, x_spec) -> tuple:
  variables = jax.tree.unflatten(treedef, leaves)
  traced = {}
  for batch in (2, 3):
    spec = jax.ShapeDtypeStruct(
        (batch,) + tuple(x_spec.shape[1:]), x_spec.dtype
    )
    names = []

    def in_order(v, x, names=names):
      # eval_shape returns dicts sorted by key: keep the order as a list.
      out = reps(v, x)
      names.extend(out)
      return list(out.values())

    traced[batch] = dict(zip(names, jax.eval_shape(in_order, variables, spec)))
  two, three = traced[2], traced[3]
  if not two:
    raise ValueError(
        "layers: no representation selected (the filter matched "
        "no submodule and the model returned no array)"
    )
  specs = []
  for name, a in two.items():
    b = three.get(name)
    if (
        a.ndim == 0
        or b is None
        or a.shape[0] != 2
        or b.shape != (3,) + tuple(a.shape[1:])
    ):
      raise ValueError(
          f"layer {name!r} has shape {tuple(a.shape)} for a batch of 2 "
          f"examples: it has no leading batch axis. Exclude it with the "
          "layers argument (a module filter), or return per-example arrays."
      )
    if not jnp.issubdtype(a.dtype, jnp.inexact):
      raise ValueError(
          f"layer {name!r} has dtype {a.dtype}: only floating "
          "representations can be mixed. Exclude it with the layers "
          "argument."
      )
    specs.append(LayerSpec(name, tuple(a.shape[1:]), jnp.dtype(a.dtype)))
  return tuple(specs)


def layer_specs(
    reps: Representations, variables, x_spec: jax.ShapeDtypeStruct
) -> tuple[LayerSpec, ...]:
  """The layers of ``reps`` for inputs like ``x_spec``, validated.

  Traced abstractly (``jax.eval_shape``, no FLOPs) for batches of 2 and 3
  examples: every layer must have a leading batch axis and a floating
  dtype, else a ValueError names the layer.  Cached per (representations,
  variable shapes, input shape).
  """
  leaves, treedef = jax.tree.flatten(_abstract(variables))
  return _layer_specs_cached(
      reps,
      treedef,
      tuple(leaves),
      jax.ShapeDtypeStruct(x_spec.shape, x_spec.dtype),
  )
