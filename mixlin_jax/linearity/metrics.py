"""Layer-wise linearity of learned representations along mixup paths.

The question this module answers: if a network was trained with mixup (its
*output* was asked to be linear along segments between training examples),
how linear are its *intermediate representations* along those segments, layer
by layer?

Definitions
-----------
For layer ``l`` with representation ``h_l`` (flattened per example), a tuple of
``K`` examples ``x_1..x_K`` and mixing weights ``w`` on the simplex::

    m_l = sum_i w_i h_l(x_i)        # mixture of representations
    r_l = h_l(sum_i w_i x_i)        # representation of the mixture

1. ``interp_error`` (primary)::

       ||r_l - m_l||^2 / sum_i w_i ||h_l(x_i) - m_l||^2

   The numerator is the failure of ``h_l`` to commute with mixing; it is zero
   for every affine map, because affine maps preserve convex combinations.
   The denominator is the weighted spread of the ``K`` representations around
   their mixture (the "size" of the simplex the tuple spans in layer ``l``).
   Dividing by it makes the value invariant to scaling, shifting and rotating
   ``h_l`` (both terms transform identically), hence comparable across layers
   whose widths and scales differ wildly.  It is computed through the
   identity ``sum_i w_i ||h_i - m||^2 = sum_{i<j} w_i w_j ||h_i - h_j||^2``,
   so the pairwise distances are computed once per tuple, independently of
   the number of weight vectors, and without the cancellation of the
   ``E||h||^2 - ||m||^2`` form.

2. ``relative_error``: ``||r_l - m_l||^2 / ||m_l||^2``.  Same numerator, but
   normalized by the size of the representation rather than by the size of
   the tuple; it is *not* shift invariant (a large common offset makes it
   small) and is reported as a secondary, more familiar quantity.

3. ``tangent_residual`` (local linearity along the path): with
   ``x(t) = x_1 + t (x_2 - x_1)``::

       ||h(x(t)) - h(x_1) - t J_h(x_1)(x_2 - x_1)||^2 / ||h(x(t)) - h(x_1)||^2

   i.e. how much of the displacement from ``x_1`` is *not* explained by the
   first-order Taylor expansion at ``x_1``.  Zero for affine maps, invariant
   to scaling/shifting/rotating ``h``.  ``interp_error`` says whether the
   chord is preserved; this says whether the map is linear along the path.
   ``J_h(x_1)(x_2 - x_1)`` is a Jacobian-vector product, computed for *all*
   layers with a single ``jax.jvp`` (forward mode) of the activations function.
   For ``K = 2`` the path parameter is ``t = w_2`` for each weight vector
   ``w = (1 - t, t)``, so the path points are exactly the mixtures and their
   forward pass is reused.  For ``K > 2`` the path uses the tuple's first two
   points and the ``t`` values of the ``K = 2`` grid (``tangent_t``); the
   Dirichlet weights have no natural one-dimensional parameter, and using the
   same ``t`` grid keeps the tangent residual comparable between ``K = 2``
   and ``K > 2`` runs.  Its first axis is therefore ``len(tangent_t)``, not
   the number of weight vectors, when ``K > 2``.

4. ``raw_gap``: ``||r_l - m_l||`` (a norm, not squared, and not normalized),
   the form of the linearity measure of the alibi library, which is what
   other tools report.  On a layer of class logits (``logits_layers``) it is
   computed on log-probabilities, ``log_softmax`` over the last axis, as alibi
   does for classifiers (alibi adds 1e-10 inside the log; we use the exact
   ``log_softmax``).  It depends on the layer's scale, so it compares a layer
   with itself over training, not layers with each other.

Degenerate tuples
-----------------
The three normalized metrics divide by how far apart the tuple's points are
in layer ``l``.  When the points are indistinguishable there (identical
inputs; a constant, dead or collapsed layer) the ratio is undefined: the
numerator is then floating-point noise (or, for a layer that merges distinct
inputs onto one point, e.g. ``h(x) = x^2`` at ``x = -1, 1``, a genuine
difference divided by zero).  Such a tuple is **excluded** from that layer's
mean and **counted**, never scored 0 or 1e10.  A tuple is degenerate at a
layer when::

    mean_i ||h_i - hbar||^2  <=  rtol * mean_i ||h_i||^2,
    rtol = max(DEGENERATE_RTOL, eps(dtype_l)^2)

(``hbar`` the tuple's centroid; the tangent residual asks the same of its two
path end points ``x_1, x_2``).  ``DEGENERATE_RTOL = 1e-8``: the points differ
by less than 1e-4 of their RMS size.  Why that value: the numerator's
rounding noise in float32 is about 1e-13 of ``mean ||h||^2`` (measured on
the small CNN with sklearn's digits: tuples of identical points give
``||r - m||^2 <= 6e-14 mean ||h||^2`` at every layer; the issue that
introduced this rule saw 1.2e-13 on a trained CNN), so on any tuple that is
kept, noise contributes at most ~1e-5 to the ratio, below what the metrics
resolve on real data (1e-3 and up); and distinct natural inputs are far more
than 1e-4 apart in a layer that still carries information (the same
measurement: over 2000 tuples of distinct digits the smallest spread is
1e-3 of ``mean ||h||^2``, at the logits; 1e-2 in the conv layers).  A
bfloat16 layer resolves only ``eps(bf16)^2 ~ 6e-5``, hence the ``eps^2``
term.  An all-zero layer (``0 <= 0``) is degenerate.  ``raw_gap`` has no
denominator and is defined for every tuple.

**Degenerate path steps.**  The tangent residual asks the same, for each
path parameter ``t``, of the pair ``x_1, x(t)``: its denominator
``||h(x(t)) - h(x_1)||^2`` is zero for a tuple that is not degenerate when
the path point lands where the first point does (``h(x) = x^2`` at ``x_1 =
0.5, x_2 = -2, t = 0.4``, so ``x(t) = -0.5``; or ``x_1`` and ``x(t)`` both
in a ReLU's dead region), where the ratio would be ``num / (EPS_REL *
scale)`` (8e10 in the first case) or, with a zero numerator too, 0
("perfectly linear").  Such a ``(tuple, t)`` is left out of that ``t``'s
mean and counted, like a degenerate tuple.

Every kept ratio is still computed as ``num / max(den, EPS_REL * scale,
TINY)``: for ``K > 2`` a weight vector that puts almost all of its mass on one
point makes ``den`` tiny for a tuple that is not degenerate.

Sampling.  See :mod:`mixlin_jax.linearity.sampling`.

Layers may compute in bf16; all metrics are computed in float32 (and the
naive reference in float64).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mixlin_jax.linearity import representations as reps_lib
from mixlin_jax.linearity.sampling import DEFAULT_GRID, check_weights

__all__ = [
    "DEGENERATE_RTOL",
    "EPS_REL",
    "METRICS",
    "NORMALIZED_METRICS",
    "TINY",
    "check_metrics",
    "degenerate_rtol_for",
    "forward_points",
    "naive_per_tuple_metrics",
    "per_tuple_metrics",
    "stacked_tuple_values",
    "tuple_values",
]

#: Metrics divided by a spread of the tuple (scale-free, comparable across
#: layers); degenerate tuples are excluded from them.
NORMALIZED_METRICS = ("interp_error", "relative_error", "tangent_residual")
#: All metrics, in the order results list them.
METRICS = NORMALIZED_METRICS + ("raw_gap",)

#: A tuple is degenerate at a layer when the spread of its points is at most
#: this fraction of their second moment (see the module docstring).
DEGENERATE_RTOL = 1e-8

#: Floor of a kept ratio's denominator, relative to the representations'
#: second moment (K > 2 weights concentrated on one point).
EPS_REL = 1e-10
#: Absolute floor so an all-zero denominator never divides by zero.
TINY = float(np.finfo(np.float32).tiny)

def check_metrics(metrics) -> tuple[str, ...]:
  """``metrics`` in canonical order, or a ValueError naming the argument."""
  if isinstance(metrics, str):
    metrics = (metrics,)
  metrics = tuple(metrics)
  unknown = [m for m in metrics if m not in METRICS]
  if unknown or not metrics:
    raise ValueError(
        f"metrics must be a non-empty subset of {METRICS}, got {metrics}"
    )
  # Canonical order, so the jit cache key does not depend on the caller's order.
  return tuple(m for m in METRICS if m in metrics)


def degenerate_rtol_for(dtype, rtol: float = DEGENERATE_RTOL) -> float:
  """The degeneracy threshold of a layer computed in ``dtype``."""
  dtype = jnp.dtype(dtype)
  eps = float(jnp.finfo(dtype).eps) if jnp.issubdtype(dtype, jnp.inexact) else 0
  return max(float(rtol), eps * eps)


# ---------------------------------------------------------------------------
# Vectorized per-tuple metrics


def _safe_ratio(num, den, scale):
  floor = jnp.maximum(EPS_REL * scale, TINY)
  return num / jnp.maximum(den, floor)


def _pair_indices(k: int):
  i, j = np.triu_indices(k, 1)
  return i, j


def _weight_columns(weights):
  """The K columns of (W, K) weights, each (W, 1, 1), for :func:`_mix`:
  taken once per trace, not once per layer (each column is a slice, a
  squeeze and a broadcast to trace and lower)."""
  return tuple(weights[:, k, None, None] for k in range(weights.shape[1]))


def _mix(columns, points):
  """``sum_k w_k h_k``: :func:`_weight_columns` of (W, K) weights, K points
  (T, D) -> (W, T, D), as broadcast multiply-adds that XLA fuses into the
  reduction consuming them (a dot with a contraction of 2 or 3 is slow on
  CPU and would be written out)."""
  terms = [c * p[None] for c, p in zip(columns, points)]
  return functools.reduce(jnp.add, terms)


def _sums_over_last_axis(terms: dict) -> dict:
  """``{name: sum(x, axis=-1)}`` for same-shaped expressions, as one
  variadic reduction: XLA fuses their producers into a single pass over the
  inputs instead of one pass (and one re-computation) per sum.  Over the
  (W, T, D) mixtures of a wide layer this is several times faster than
  separate sums, and the metrics' arithmetic then costs little next to the
  forward passes."""
  names = list(terms)
  operands = tuple(terms[n].astype(jnp.float32) for n in names)
  zero = (np.float32(0),) * len(operands)
  sums = lax.reduce(
      operands,
      zero,
      lambda a, b: tuple(x + y for x, y in zip(a, b)),
      (operands[0].ndim - 1,),
  )
  return dict(zip(names, sums))


def _log_probs(flat, shape):
  """log_softmax over the last axis of a layer given flattened ``(..., D)``."""
  lead = flat.shape[:-1]
  full = flat.reshape(lead + tuple(shape))
  return jax.nn.log_softmax(full, axis=-1).reshape(flat.shape)


def _layer_sums(points, r, jd, hp, *, columns, path_t, metrics, shape,
                log_probs):
  """The reductions over one layer's features that the metrics need.

  points: the K originals, each (T, D); r: (W, T, D) mixtures (or None);
  jd: (T, D) JVP at x_1 (or None); hp: (G, T, D) path points (or None);
  columns: :func:`_weight_columns` of the weights; path_t: (G, 1, 1)
  path parameters of ``hp`` (or None).
  Returns ``{name: [(..., T) arrays]}``: ``"hn"`` the K squared norms,
  ``"pair"`` the squared distances of the pairs i < j and, as needed,
  ``"num"`` ``||r - m||^2``, ``"mixture"`` ``||m||^2``, ``"gap2"`` the
  squared raw gap (W, T), and the tangent residual's ``"residual"``,
  ``"displacement"``, ``"path"`` (W or G, T).  Each group of same-shaped
  sums is one variadic reduction (:func:`_sums_over_last_axis`), and the
  points are never stacked into a (T, K, D) copy.  (K = 2 with both the
  mixtures' metrics and the tangent residual goes through
  :func:`_layer_sums_two_points` instead.)  Everything after these
  sums is the same arithmetic for every layer, done once on all layers
  stacked (:func:`_values_from_sums`).
  """
  K = len(points)
  pi, pj = _pair_indices(K)
  base = {f"hn{k}": jnp.square(p) for k, p in enumerate(points)}
  base.update(
      {f"pair{i}_{j}": jnp.square(points[i] - points[j]) for i, j in zip(pi, pj)}
  )
  base = _sums_over_last_axis(base)
  sums = {
      "hn": [base[f"hn{k}"] for k in range(K)],
      "pair": [base[f"pair{i}_{j}"] for i, j in zip(pi, pj)],
  }
  h1 = points[0]  # (T, D)
  if r is not None:
    m = _mix(columns, points)  # fused, never written out
    terms = {"num": jnp.square(r - m)}
    if "relative_error" in metrics:
      terms["mixture"] = jnp.square(m)
    if "raw_gap" in metrics and log_probs:
      lm = _mix(columns, [_log_probs(p, shape) for p in points])
      terms["gap2"] = jnp.square(_log_probs(r, shape) - lm)
    sums.update({k: [v] for k, v in _sums_over_last_axis(terms).items()})
    if "raw_gap" in metrics and not log_probs:
      sums["gap2"] = sums["num"]
  if jd is not None:
    diff = hp - h1[None]  # (G, T, D)
    terms = {
        "residual": jnp.square(diff - path_t * jd[None]),
        "displacement": jnp.square(diff),
        "path": jnp.square(hp),
    }
    path_sums = _sums_over_last_axis(terms)
    sums.update({k: [v] for k, v in path_sums.items()})
  return sums


def _layer_sums_two_points(points, ext, jd, *, columns, metrics, shape,
                           log_probs):
  """:func:`_layer_sums` for K = 2 with every forward, in one reduction.

  ``ext``: ``(W + 1, T, D)``, the mixtures' rows then x_2's, a view of
  the forward's output (see :func:`forward_points`); ``columns``:
  :func:`_weight_columns` of the weights with a last row (1, 0).  x_2's
  row is reduced with the weights (1, 0), i.e. against the "mixture" h_1:
  its ``num`` is then ``||h_2 - h_1||^2``, its ``mixture`` ``||h_1||^2``
  and its ``path`` ``||h_2||^2``, the three sums of the tuple's points,
  so each layer costs one reduction kernel (not two) for one more row,
  and nothing is copied.  Returns ``{name: [(W + 1, T)]}``, rows whole:
  :func:`_split_two_point_rows` takes x_2's row apart once all layers are
  stacked (sliced here, each layer's rows were a small XLA kernel per
  name and layer, most of a first call's kernels).
  """
  h1 = points[0]
  t = columns[1]  # the path parameter of each row
  m = _mix(columns, points)  # fused, never written out
  diff = ext - h1[None]
  terms = {
      "num": jnp.square(ext - m),
      "mixture": jnp.square(m),
      "residual": jnp.square(diff - t * jd[None]),
      "displacement": jnp.square(diff),
      "path": jnp.square(ext),
  }
  if "raw_gap" in metrics and log_probs:
    # One log-softmax for x_1's rows and ext's, x_2's being ext's last:
    # per point, each was a logsumexp of its own to compile.
    lp = _log_probs(jnp.concatenate([h1[None], ext]), shape)
    lm = _mix(columns, [lp[0], lp[-1]])
    terms["gap2"] = jnp.square(lp[1:] - lm)
  out = _sums_over_last_axis(terms)
  if "raw_gap" in metrics and not log_probs:
    out["gap2"] = out["num"]
  return {k: [v] for k, v in out.items()}


def _split_two_point_rows(sums, metrics):
  """The stacked sums of :func:`_layer_sums_two_points` (each (L, W + 1,
  T)) in the form of :func:`_layer_sums`: x_2's row (the last) gives
  ``hn`` (L, 2, T) and ``pair`` (L, 1, T), the other rows the W
  mixtures' sums."""
  W = sums["num"].shape[1] - 1
  out = {
      "hn": jnp.concatenate(
          [sums["mixture"][:, W:], sums["path"][:, W:]], axis=1
      ),
      "pair": sums["num"][:, W:],
  }
  out.update({k: v[:, :W] for k, v in sums.items()})
  if "relative_error" not in metrics:
    del out["mixture"]
  return out


def _contract_rows(coefficients, rows):
  """``sum_k c[w, k] rows[l, k, t]`` -> (L, W, T) as broadcast
  multiply-adds: an exact float32 sum of K (or K(K-1)/2) terms that XLA
  fuses into its consumers, where a dot of so small a contraction is a
  kernel of its own to compile and, on CPU, slower to run."""
  terms = [
      coefficients[None, :, k, None] * rows[:, k, None]
      for k in range(rows.shape[1])
  ]
  return functools.reduce(jnp.add, terms)


def _stack_layers(per_layer):
  """``{name: (L, R, T)}`` from the layers' :func:`_layer_sums`, through
  one concatenation of every sum as rows (R, T), name-major, so that each
  name's rows are a contiguous slice (XLA makes it one small kernel per
  name).  Only a (T,) sum is reshaped to a row: the K = 2 sums, already
  (W + 1, T), go in as they are."""
  names = list(per_layer[0])
  pieces, rows = [], {}
  for name in names:
    for sums in per_layer:
      parts = [p if p.ndim == 2 else p.reshape((1, -1)) for p in sums[name]]
      pieces += parts
      rows[name] = sum(p.shape[0] for p in parts)
  flat = jnp.concatenate(pieces)
  out, start = {}, 0
  num_layers = len(per_layer)
  for name in names:
    size = num_layers * rows[name]
    out[name] = flat[start:start + size].reshape(
        (num_layers, rows[name], flat.shape[-1])
    )
    start += size
  return out


def _values_from_sums(sums, *, weights, metrics, rtol):
  """Metrics of all layers at once from their stacked :func:`_layer_sums`.

  ``sums``: the per-layer sums stacked by :func:`_stack_layers`, each
  (L, R, T): ``hn`` (L, K, T), ``pair`` (L, P, T), the others (L, W or G,
  T); ``rtol``: (L,) degeneracy thresholds.  Returns ``({metric: (L, W or
  G, T)}, {metric: (L, T) degenerate}, (L, T) degenerate over all K
  points)``; the tangent residual's degenerate mask is ``(L, W or G, T)``:
  a tuple whose path end points coincide, or a path point
  indistinguishable from ``x_1`` (see the module docstring).  One set of
  small element-wise kernels for every layer, not one per layer: on a
  first call, XLA's compile time grows with the number of kernels, and
  per-layer arithmetic was most of them.
  """
  hn, pair = sums["hn"], sums["pair"]  # (L, K, T), (L, P, T)
  K = hn.shape[1]
  pi, pj = _pair_indices(K)
  rtol = jnp.asarray(rtol, jnp.float32)[:, None]  # (L, 1)
  spread = jnp.sum(pair, axis=1) / (K * K)  # mean_i ||h_i - hbar||^2
  tuple_degenerate = spread <= rtol * jnp.mean(hn, axis=1)
  if K == 2:
    pair_degenerate = tuple_degenerate
  else:  # pair (0, 1) is the first row of the i < j enumeration
    pair_degenerate = pair[:, 0] / 4 <= rtol * 0.5 * (hn[:, 0] + hn[:, 1])
  out, degenerate = {}, {}
  if "num" in sums:
    num = sums["num"]  # (L, W, T)
    second = _contract_rows(weights, hn)
    if "interp_error" in metrics:
      den = _contract_rows(weights[:, pi] * weights[:, pj], pair)
      out["interp_error"] = _safe_ratio(num, den, second)
      degenerate["interp_error"] = tuple_degenerate
    if "relative_error" in metrics:
      out["relative_error"] = _safe_ratio(num, sums["mixture"], second)
      degenerate["relative_error"] = tuple_degenerate
    if "raw_gap" in metrics:
      out["raw_gap"] = jnp.sqrt(sums["gap2"])
      degenerate["raw_gap"] = jnp.zeros_like(tuple_degenerate)
  if "tangent_residual" in metrics:
    scale = hn[:, :1] + sums["path"]  # ||h(x_1)||^2 + ||h(x(t))||^2
    out["tangent_residual"] = _safe_ratio(
        sums["residual"], sums["displacement"], scale
    )
    # The degenerate-tuple rule applied to the pair (x_1, x(t)): spread
    # ||h(x(t)) - h(x_1)||^2 / 4 <= rtol * (||h(x_1)||^2 + ||h(x(t))||^2) / 2.
    step_degenerate = sums["displacement"] <= 2.0 * rtol[:, None] * scale
    degenerate["tangent_residual"] = pair_degenerate[:, None] | step_degenerate
  return out, degenerate, tuple_degenerate


class Forwards(NamedTuple):
  """What :func:`forward_points` returns (see there)."""

  layers: tuple
  h: tuple
  r: tuple | None
  jd: tuple | None
  hp: tuple | None
  t_vals: Any
  mixtures_and_second: tuple | None


def forward_points(
    reps, variables, x, weights, tangent_t, metrics, constrain=None
):
  """Every forward pass the metrics need, as few and as batched as possible.

  ``x``: ``(T, K, *input)``.  The originals are forwarded once (``x_1``
  through the JVP when the tangent residual is wanted: the JVP's primal
  *is* ``h(x_1)``); the ``W * T`` mixtures and, for ``K > 2``, the ``G * T``
  tangent path points share one batched forward with the other originals.
  This is the floor the benchmark compares the metrics against.

  Returns :class:`Forwards` ``(layers, h, r, jd, hp, t_vals,
  mixtures_and_second)``: ``layers`` a tuple of
  ``(name, trailing shape, dtype)`` in network order; ``h[l]`` the K
  originals, each ``(T, D)`` (rows of the batched forward, never copied
  into one array),
  ``r[l]`` ``(W, T, D)`` or None, ``jd[l]`` ``(T, D)`` or None, ``hp[l]``
  ``(G, T, D)`` or None (float32, flattened per example); ``t_vals`` the
  path parameters of ``hp``; ``mixtures_and_second[l]`` (K = 2 with the
  tangent residual and the mixtures' metrics, else None) ``(W + 1, T,
  D)``, the mixtures' rows then x_2's, the forward's output of which
  ``r[l]`` and ``h[l][1]`` are slices.
  """
  x = jnp.asarray(x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # mix inputs in >= f32
  T, K = x.shape[:2]
  in_shape = x.shape[2:]
  weights = jnp.asarray(weights, jnp.float32)
  W = weights.shape[0]
  if weights.ndim != 2 or weights.shape[1] != K:
    raise ValueError(f"weights must be (W, {K}), got {weights.shape}")
  want_mix = any(
      m in metrics for m in ("interp_error", "relative_error", "raw_gap")
  )
  want_tan = "tangent_residual" in metrics
  layers: list = []  # filled at trace time by the first forward

  def acts(z):
    if constrain is not None:
      z = constrain(z)
    out = reps(variables, z)
    if not layers:
      layers.extend(
          (n, tuple(a.shape[1:]), jnp.dtype(a.dtype)) for n, a in out.items()
      )
    return tuple(
        jnp.reshape(a, (a.shape[0], -1)).astype(jnp.float32)
        for a in out.values()
    )

  pieces = []
  x1 = x[:, 0]
  if want_tan:
    h1, jd = jax.jvp(acts, (x1,), (x[:, 1] - x1,))
    rest = jnp.swapaxes(x[:, 1:], 0, 1)
  else:
    h1 = jd = None
    rest = jnp.swapaxes(x, 0, 1)
  need_mix = want_mix or (
      want_tan and K == 2
  )  # K == 2: path points == mixtures
  if need_mix:
    flat = x.reshape(T, K, -1)
    xm = _mix(
        _weight_columns(weights.astype(x.dtype)),
        [flat[:, k] for k in range(K)],
    )
    pieces.append(xm.reshape((W * T,) + in_shape))
  G = 0
  if want_tan and K > 2:
    tt = jnp.asarray(tangent_t, x.dtype)
    G = tt.shape[0]
    shape_t = (G,) + (1,) * (x.ndim - 1)
    xp = x1[None] + tt.reshape(shape_t) * (x[:, 1] - x1)[None]  # (G, T, ...)
    pieces.append(xp.reshape((G * T,) + in_shape))
  # The originals last and point-major (point k = rows k T .. (k + 1) T of
  # their block): each point's representations are a contiguous slice of
  # the output, and a tuple's x_2 sits at another position of its batch
  # than its x_1 in the JVP's (see ``probe_tuples`` of
  # :func:`stacked_tuple_values`).
  pieces.append(rest.reshape((rest.shape[0] * T,) + in_shape))
  sizes = [p.shape[0] for p in pieces]
  z = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=0)
  hz = acts(z)
  first = (lambda l: (h1[l],)) if want_tan else (lambda l: ())
  if want_tan and K == 2:
    # The mixtures then x_2, as one (W + 1, T, D) view of the output: the
    # mixtures and the second points are slices of one array, which the
    # two-point sums (:func:`_layer_sums_two_points`) reduce together.
    ext = tuple(a.reshape(W + 1, T, -1) for a in hz)
    h = tuple(first(l) + (e[W],) for l, e in enumerate(ext))
    r = tuple(e[:W] for e in ext)
  else:
    ext = None
    offsets = np.cumsum([0] + sizes)
    parts = [
        tuple(a[s:e] for a in hz) for s, e in zip(offsets[:-1], offsets[1:])
    ]
    orig = parts.pop()
    h = tuple(
        first(l) + tuple(o[k * T:(k + 1) * T] for k in range(o.shape[0] // T))
        for l, o in enumerate(orig)
    )
    r = tuple(a.reshape(W, T, -1) for a in parts.pop(0)) if need_mix else None
  hp, t_vals = None, None
  if want_tan:
    if K == 2:
      hp, t_vals = r, weights[:, 1]
    else:
      hp = tuple(a.reshape(G, T, -1) for a in parts.pop(0))
      t_vals = jnp.asarray(tangent_t, jnp.float32)
  return Forwards(tuple(layers), h, r if want_mix else None, jd, hp, t_vals,
                  ext if want_mix else None)


def stacked_tuple_values(
    reps,
    variables,
    x,
    weights,
    tangent_t,
    metrics,
    *,
    logits_layers=(),
    degenerate_rtol=DEGENERATE_RTOL,
    constrain=None,
    probe_tuples=0,
) -> dict:
  """Traceable core: :func:`tuple_values` with a leading layer axis.

  Returns ``{"layers": ((name, shape, dtype), ...), "values": {metric: (L,
  R, T)}, "degenerate": {metric: (L, T) bool, the tangent residual's (L, R,
  T)}, "tuple_degenerate": (L, T) bool, "batch_dependence": () or None}``,
  layers in network order.  Only the reductions over each layer's features
  are per layer; what follows them is computed once for all layers (fewer
  kernels to compile).

  ``probe_tuples`` > 0 (only with the tangent residual, whose JVP is a
  forward of its own): the last ``probe_tuples`` tuples of ``x`` are
  probes, K copies of one example, left out of the returned values; T
  counts the others.  A probe's x_1 is computed in the JVP's batch and
  its x_2 in the other forward's, in batches of different sizes and
  contents and at different positions, so their distance (the tuple's
  pair distance, which the reductions compute anyway) tells whether an
  example's representations depend on the rest of its batch (BatchNorm
  in training mode, dropout) with no kernel of its own: a separate check
  compiled a forward of its own, and per-layer comparisons of one row
  were a sixth of a first call's kernels.  ``batch_dependence`` is then
  the largest relative difference over layers and probes; else None.  A
  multiple of the number of devices keeps a sharded batch divisible.
  """
  if probe_tuples and "tangent_residual" not in metrics:
    raise ValueError("probe_tuples needs the tangent residual's JVP forward")
  layers, h, r, jd, hp, t_vals, ext = forward_points(
      reps,
      variables,
      x,
      weights,
      tangent_t,
      metrics,
      constrain,
  )
  weights = jnp.asarray(weights, jnp.float32)
  # Per-layer constants, traced once: x_2's row of ext has the weights (1, 0).
  columns = _weight_columns(
      weights
      if ext is None
      else jnp.concatenate([weights, jnp.asarray([[1.0, 0.0]], jnp.float32)])
  )
  path_t = None if t_vals is None else t_vals[:, None, None]
  per_layer = [
      _layer_sums_two_points(
          h[i],
          ext[i],
          jd[i],
          columns=columns,
          metrics=metrics,
          shape=shape,
          log_probs=name in logits_layers,
      )
      if ext is not None
      else _layer_sums(
          h[i],
          None if r is None else r[i],
          None if jd is None else jd[i],
          None if hp is None else hp[i],
          columns=columns,
          path_t=path_t,
          metrics=metrics,
          shape=shape,
          log_probs=name in logits_layers,
      )
      for i, (name, shape, dtype) in enumerate(layers)
  ]
  sums = _stack_layers(per_layer)
  if ext is not None:
    sums = _split_two_point_rows(sums, metrics)
  rtol = np.asarray(
      [degenerate_rtol_for(dtype, degenerate_rtol) for _, _, dtype in layers],
      np.float32,
  )
  dependence = None
  if probe_tuples:  # ||h_1 - h_2|| / ||h_1|| of the probes, per layer
    n = x.shape[0] - probe_tuples
    dependence = jnp.max(jnp.sqrt(
        sums["pair"][:, 0, n:] / jnp.maximum(sums["hn"][:, 0, n:], 1e-30)))
    sums = {k: v[..., :n] for k, v in sums.items()}
  values, degenerate, tuple_degenerate = _values_from_sums(
      sums, weights=weights, metrics=metrics, rtol=rtol
  )
  return {
      "layers": layers,
      "values": {m: values[m] for m in metrics},
      "degenerate": {m: degenerate[m] for m in metrics},
      "tuple_degenerate": tuple_degenerate,
      "batch_dependence": dependence,
  }


def tuple_values(
    reps,
    variables,
    x,
    weights,
    tangent_t,
    metrics,
    *,
    logits_layers=(),
    degenerate_rtol=DEGENERATE_RTOL,
    constrain=None,
) -> dict:
  """Traceable core: per-tuple metric values and degeneracy of every layer.

  Args:
    reps: ``reps(variables, x) -> {layer: (N, ...)}`` in network order (a
      :class:`~mixlin_jax.linearity.representations.Representations`).
    variables, x, weights, tangent_t, metrics: see :func:`per_tuple_metrics`.
    logits_layers: names of layers holding class logits (``raw_gap`` is
      taken on their log-probabilities).
    degenerate_rtol: see the module docstring.
    constrain: optional function applied to every batch given to ``reps``
      (e.g. a sharding constraint).

  Returns:
    ``{"layers": ((name, shape, dtype), ...),
    "values": {metric: {layer: (R, T)}},
    "degenerate": {metric: {layer: (T,) bool}},
    "tuple_degenerate": {layer: (T,) bool}}``; ``R`` is ``W`` or, for the
    tangent residual with ``K > 2``, ``len(tangent_t)``.  The tangent
    residual's degenerate mask is ``(R, T)`` (per path parameter, see the
    module docstring).  Values of degenerate tuples are finite but
    meaningless: mask them.
  """
  out = stacked_tuple_values(
      reps,
      variables,
      x,
      weights,
      tangent_t,
      metrics,
      logits_layers=logits_layers,
      degenerate_rtol=degenerate_rtol,
      constrain=constrain,
  )
  names = [name for name, _, _ in out["layers"]]
  split = lambda a: {name: a[i] for i, name in enumerate(names)}
  return {
      "layers": out["layers"],
      "values": {m: split(v) for m, v in out["values"].items()},
      "degenerate": {m: split(d) for m, d in out["degenerate"].items()},
      "tuple_degenerate": split(out["tuple_degenerate"]),
  }


@functools.partial(
    jax.jit,
    static_argnames=("reps", "metrics", "logits_layers", "degenerate_rtol"),
)
def _per_tuple_jit(
    variables,
    x,
    weights,
    tangent_t,
    *,
    reps,
    metrics,
    logits_layers,
    degenerate_rtol,
):
  out = tuple_values(
      reps,
      variables,
      x,
      weights,
      tangent_t,
      metrics,
      logits_layers=logits_layers,
      degenerate_rtol=degenerate_rtol,
  )
  return {
      m: {
          n: jnp.where(out["degenerate"][m][n], jnp.nan, v)  # (T,) or (R, T)
          for n, v in out["values"][m].items()
      }
      for m in metrics
  }


def _resolve_tangent_t(num_points: int, tangent_t):
  if num_points == 2:
    return None  # t = w_2, taken from the weights inside the computation
  return np.asarray(
      DEFAULT_GRID if tangent_t is None else tangent_t, np.float32
  ).reshape(-1)


def per_tuple_metrics(
    apply_fn: Callable,
    variables: Any,
    x_tuples,
    weights,
    *,
    tangent_t: Sequence[float] | None = None,
    metrics: Sequence[str] = METRICS,
    logits_layers: Sequence[str] = (),
    degenerate_rtol: float = DEGENERATE_RTOL,
) -> dict:
  """Per-tuple metric values for every layer, in one jitted computation.

  Args:
    apply_fn: ``apply_fn(variables, x) -> (logits, {layer: (N, ...)})``,
      inference mode, examples independent of each other in the batch
      (layers sorted by name); or a
      :class:`~mixlin_jax.linearity.representations.Representations`.
    variables: model variables (a pytree; traced).
    x_tuples: float ``(T, K, *input_shape)``.
    weights: ``(W, K)`` rows on the simplex (see
      :func:`~mixlin_jax.linearity.sampling.mixing_weights`).
    tangent_t: path parameters of the tangent residual, only used for
      ``K > 2`` (default ``DEFAULT_GRID``); for ``K = 2`` ``t = w_2``.
    metrics: subset of :data:`METRICS` (the JVP is skipped without
      ``tangent_residual``).
    logits_layers: layers whose ``raw_gap`` is taken on log-probabilities.
    degenerate_rtol: see the module docstring.

  Returns:
    ``{metric: {layer: (W, T) float32}}`` (``(len(tangent_t), T)`` for the
    tangent residual when ``K > 2``), numpy arrays, layers in network order.
    **NaN marks a tuple that is degenerate at that layer** (its points are
    indistinguishable there, see the module docstring): it has no value;
    for the tangent residual also a ``(t, tuple)`` whose path point is
    indistinguishable from ``x_1`` there.

  Two wrappers around the same model share one compilation (see
  :class:`~mixlin_jax.linearity.representations.SameComputation`).
  """
  metrics = check_metrics(metrics)
  reps = reps_lib.as_representations(apply_fn)
  x_tuples = jnp.asarray(x_tuples)
  K = x_tuples.shape[1]
  weights = check_weights(weights, K)
  out = _per_tuple_jit(
      variables,
      x_tuples,
      weights,
      _resolve_tangent_t(K, tangent_t),
      reps=reps,
      metrics=metrics,
      logits_layers=tuple(logits_layers),
      degenerate_rtol=float(degenerate_rtol),
  )
  order = [
      spec.name
      for spec in reps_lib.layer_specs(
          reps,
          variables,
          jax.ShapeDtypeStruct(
              (2,) + x_tuples.shape[2:],
              jnp.promote_types(x_tuples.dtype, jnp.float32),
          ),
      )
  ]
  return {m: {n: np.asarray(out[m][n]) for n in order} for m in metrics}


# ---------------------------------------------------------------------------
# Naive reference


def naive_per_tuple_metrics(
    apply_fn: Callable,
    variables: Any,
    x_tuples,
    weights,
    *,
    tangent_t: Sequence[float] | None = None,
    metrics: Sequence[str] = METRICS,
    logits_layers: Sequence[str] = (),
    degenerate_rtol: float = DEGENERATE_RTOL,
) -> dict:
  """Same values as :func:`per_tuple_metrics`, the obvious way.

  A Python loop over weights (one forward per weight vector, transferred to
  host) and over layers, numpy float64 arithmetic, the interpolation
  denominator computed directly as ``sum_i w_i ||h_i - m||^2`` (not via
  pairwise distances), the tuple spread as ``mean_i ||h_i - hbar||^2`` and
  the tangent path points forwarded separately even for K = 2.  It exists as
  an independent reference for the tests and as the baseline of the
  benchmark; do not use it for real evaluations.
  """
  metrics = check_metrics(metrics)
  reps = reps_lib.as_representations(apply_fn)
  x = np.asarray(x_tuples, dtype=np.float64)
  w = np.asarray(weights, dtype=np.float64)
  T, K = x.shape[:2]
  in_shape = x.shape[2:]
  shapes, dtypes = {}, {}

  def fwd(z):
    acts = reps(variables, jnp.asarray(z, jnp.float32))
    out = {}
    for k, v in acts.items():
      shapes[k], dtypes[k] = v.shape[1:], v.dtype
      out[k] = np.asarray(jnp.asarray(v, jnp.float32), np.float64).reshape(
          z.shape[0], -1
      )
    return out

  def log_probs(a, name):
    full = a.reshape(a.shape[:-1] + tuple(shapes[name]))
    full = full - full.max(-1, keepdims=True)
    full = full - np.log(np.exp(full).sum(-1, keepdims=True))
    return full.reshape(a.shape)

  orig = fwd(x.reshape((T * K,) + in_shape))
  layers = list(orig)
  h = {name: orig[name].reshape(T, K, -1) for name in layers}

  def ratio(num, den, scale):
    return num / np.maximum(den, np.maximum(EPS_REL * scale, TINY))

  def degenerate(points, name):  # points: (T, n, D)
    centroid = points.mean(1, keepdims=True)
    spread = ((points - centroid) ** 2).sum(-1).mean(1)
    rtol = degenerate_rtol_for(dtypes[name], degenerate_rtol)
    return spread <= rtol * (points**2).sum(-1).mean(1)

  out = {m: {} for m in metrics}
  if any(m in metrics for m in ("interp_error", "relative_error", "raw_gap")):
    for m in metrics:
      if m != "tangent_residual":
        out[m] = {name: np.zeros((w.shape[0], T)) for name in layers}
    for wi in range(w.shape[0]):
      xm = np.zeros((T,) + in_shape)
      for k in range(K):
        xm += w[wi, k] * x[:, k]
      r = fwd(xm)
      for name in layers:
        hl = h[name]
        m = sum(w[wi, k] * hl[:, k] for k in range(K))
        num = ((r[name] - m) ** 2).sum(-1)
        den = sum(w[wi, k] * ((hl[:, k] - m) ** 2).sum(-1) for k in range(K))
        second = sum(w[wi, k] * (hl[:, k] ** 2).sum(-1) for k in range(K))
        if "interp_error" in metrics:
          out["interp_error"][name][wi] = ratio(num, den, second)
        if "relative_error" in metrics:
          out["relative_error"][name][wi] = ratio(num, (m**2).sum(-1), second)
        if "raw_gap" in metrics:
          if name in logits_layers:
            lm = sum(w[wi, k] * log_probs(hl[:, k], name) for k in range(K))
            gap = np.sqrt(((log_probs(r[name], name) - lm) ** 2).sum(-1))
          else:
            gap = np.sqrt(num)
          out["raw_gap"][name][wi] = gap
    for m in ("interp_error", "relative_error"):
      if m in metrics:
        for name in layers:
          out[m][name][:, degenerate(h[name], name)] = np.nan

  if "tangent_residual" in metrics:
    ts = (
        w[:, 1]
        if K == 2
        else np.asarray(
            DEFAULT_GRID if tangent_t is None else tangent_t, np.float64
        )
    )
    x1, d = x[:, 0], x[:, 1] - x[:, 0]
    _, jd = jax.jvp(
        lambda z: reps(variables, z),
        (jnp.asarray(x1, jnp.float32),),
        (jnp.asarray(d, jnp.float32),),
    )
    jd = {
        k: np.asarray(jnp.asarray(v, jnp.float32), np.float64).reshape(T, -1)
        for k, v in jd.items()
    }
    out["tangent_residual"] = {name: np.zeros((len(ts), T)) for name in layers}
    for ti, t in enumerate(ts):
      hp = fwd(x1 + t * d)
      for name in layers:
        h1 = h[name][:, 0]
        diff = hp[name] - h1
        res = diff - t * jd[name]
        scale = (h1**2).sum(-1) + (hp[name] ** 2).sum(-1)
        value = ratio((res**2).sum(-1), (diff**2).sum(-1), scale)
        # x(t) indistinguishable from x_1 there: no value at this t.
        step = degenerate(np.stack([h1, hp[name]], axis=1), name)
        out["tangent_residual"][name][ti] = np.where(step, np.nan, value)
    for name in layers:
      out["tangent_residual"][name][
          :, degenerate(h[name][:, :2], name)
      ] = np.nan
  return {m: out[m] for m in metrics}
