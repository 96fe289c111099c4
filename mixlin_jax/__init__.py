"""mixlin_jax: how interpolation training shapes the linearity of learned representations.

Import the pieces you need (``mixlin_jax.train``, ``mixlin_jax.linearity``,
...); importing the package itself has no side effects.
"""

__version__ = "0.1.0"
