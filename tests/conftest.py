"""Test setup: CPU only, 8 fake devices available for sharding tests.

XLA_FLAGS must be set before JAX initialises its backends, hence here.
Tests that need one device build a one-device mesh explicitly.

A persistent compilation cache (shared with the subprocesses tests start,
through the environment) keeps the many small CPU compiles of the suite from
being paid twice.
"""
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "mixlin_jax_test_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
