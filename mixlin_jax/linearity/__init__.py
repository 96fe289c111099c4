"""Layer-wise linearity of learned representations (see :mod:`.metrics`)."""

from mixlin_jax.linearity.metrics import *  # noqa: F401,F403
from mixlin_jax.linearity.metrics import __all__  # noqa: F401
