"""Layer-wise linearity of learned representations along mixup paths.

* :func:`measure` -- any Flax model, one call, a table and a figure
  (:mod:`.measure`).
* :class:`LinearityEvaluator` -- the streaming evaluator the training loop
  runs every epoch (:mod:`.evaluator`).
* the metrics' definitions, degenerate tuples and the vectorized core
  (:mod:`.metrics`); which tuples and weights are evaluated
  (:mod:`.sampling`); how a model's representations are obtained
  (:mod:`.representations`).
"""

from mixlin_jax.linearity.evaluator import (
    BATCH_DEPENDENCE_RTOL,
    COLLAPSED_FRACTION,
    LinearityEvaluator,
    default_logits_layers,
)
from mixlin_jax.linearity.measure import (
    LinearityResult,
    measure,
    results_table,
)
from mixlin_jax.linearity.metrics import (
    DEGENERATE_RTOL,
    EPS_REL,
    METRICS,
    NORMALIZED_METRICS,
    TINY,
    naive_per_tuple_metrics,
    per_tuple_metrics,
)
from mixlin_jax.linearity.representations import (
    OUTPUT,
    Representations,
    SameComputation,
)
from mixlin_jax.linearity.sampling import (
    DEFAULT_GRID,
    check_weights,
    draw_tuples,
    mixing_weights,
)

__all__ = [
    "BATCH_DEPENDENCE_RTOL",
    "COLLAPSED_FRACTION",
    "DEFAULT_GRID",
    "DEGENERATE_RTOL",
    "EPS_REL",
    "METRICS",
    "NORMALIZED_METRICS",
    "OUTPUT",
    "TINY",
    "LinearityEvaluator",
    "LinearityResult",
    "Representations",
    "SameComputation",
    "check_weights",
    "default_logits_layers",
    "draw_tuples",
    "measure",
    "mixing_weights",
    "naive_per_tuple_metrics",
    "per_tuple_metrics",
    "results_table",
]
