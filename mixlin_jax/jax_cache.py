"""JAX's persistent compilation cache, switched on for every entry point.

A study is many short runs of one config, and each run would otherwise
recompile what the previous run compiled: on the digits default run that is
about a third of the wall time (docs/performance.md). JAX can keep compiled
programs on disk and reuse them across processes; it only does so when told
where. :func:`enable` tells it, once, before the first compile:

* the folder is ``$JAX_COMPILATION_CACHE_DIR`` when set (JAX's own variable,
  so a cache the user already configured is kept), else
  ``$XDG_CACHE_HOME/mixlin_jax/jax`` (``~/.cache/mixlin_jax/jax``);
* ``MIXLIN_JAX_CACHE=off`` (or ``run.py --nocompilation_cache``) leaves
  JAX's cache alone: nothing is read or written;
* every program is cached, however quick its compile (JAX's default skips
  those under 1 s, which on CPU is most of a small model's programs);
* our folder is capped at :data:`DEFAULT_MAX_BYTES`, least recently used
  first out. The cap is also what makes it safe with several processes at
  once (``study.py --jobs``): with a cap, JAX guards every read and write
  with a file lock (the ``filelock`` package), without one a process could
  read an entry another is still writing. A folder the user chose keeps
  JAX's own settings (no cap unless ``JAX_COMPILATION_CACHE_MAX_SIZE`` is
  set): JAX's eviction fails on entries written without a cap, which
  other programs using that folder may have left.

Clearing it: delete the folder (``rm -rf ~/.cache/mixlin_jax/jax``); the next
run recompiles and refills it. The cache holds executables that JAX runs, so
keep it in a folder only you can write (JAX's own warning).
"""

from __future__ import annotations

import os

import jax

ENV_DIR = "JAX_COMPILATION_CACHE_DIR"
ENV_SWITCH = "MIXLIN_JAX_CACHE"
OFF_VALUES = ("0", "off", "false", "no")
DEFAULT_MAX_BYTES = 2 * 1024 ** 3
MIN_COMPILE_TIME_SECS = 0.0


class CacheSettingError(ValueError):
  """``MIXLIN_JAX_CACHE`` holds a value that is neither on nor off."""


def default_dir() -> str:
  """``$XDG_CACHE_HOME/mixlin_jax/jax``, ``~/.cache/mixlin_jax/jax`` if unset."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mixlin_jax", "jax")


def switched_on(environ=None) -> bool:
  """Whether ``MIXLIN_JAX_CACHE`` leaves the cache on (unset: on)."""
  value = (environ if environ is not None else os.environ).get(ENV_SWITCH, "")
  value = value.strip().lower()
  if value in ("", "1", "on", "true", "yes"):
    return True
  if value in OFF_VALUES:
    return False
  raise CacheSettingError(
      f"{ENV_SWITCH}={value!r}: expected one of on, 1, off, 0 (or unset: on)")


def enable(directory: str | None = None) -> str | None:
  """Points JAX's persistent compilation cache at a folder; returns it.

  Idempotent, and cheap after the first call. ``directory`` wins over the
  environment; a folder the user already gave JAX (``jax.config`` or
  ``JAX_COMPILATION_CACHE_DIR``) is kept. Returns None, changing nothing,
  when ``MIXLIN_JAX_CACHE`` is off. Takes effect for every compile after
  the call (JAX looks for its cache folder at each compile until it has
  one), so calling it after some other JAX work is fine.
  """
  if not switched_on():
    return None
  current = jax.config.jax_compilation_cache_dir
  chosen = directory or current or os.environ.get(ENV_DIR)
  path = chosen or default_dir()
  if path == current and path in _ENABLED:
    return path
  os.makedirs(path, exist_ok=True)
  # JAX's own variables, where the user set them, win over our defaults.
  # The cap (and with it the file lock) only on our own folder: JAX's
  # eviction expects every entry to have been written with a cap, and warns
  # at every write into a folder that other JAX programs filled without one.
  if not chosen and "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
    jax.config.update("jax_compilation_cache_max_size", DEFAULT_MAX_BYTES)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      MIN_COMPILE_TIME_SECS)
  jax.config.update("jax_compilation_cache_dir", path)
  _ENABLED.add(path)
  return path


_ENABLED: set[str] = set()  # folders enable() has set up in this process
