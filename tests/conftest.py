"""Test setup: CPU only, 8 fake devices available for sharding tests.

XLA_FLAGS must be set before JAX initialises its backends, hence here.
Tests that need one device build a one-device mesh explicitly.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
