"""The persistent compilation cache: where it goes, how to switch it off, and
that a second run of the same config compiles nothing new.

Each case runs in a subprocess with its own environment: JAX reads its cache
settings once per process, and the test process has its own cache
(conftest.py).
"""
import os
import subprocess
import sys

import pytest

import helpers

_PROBE = """
import jax
from mixlin_jax import jax_cache
print("PATH", jax_cache.enable())
print("MIN", jax.config.jax_persistent_cache_min_compile_time_secs)
print("MAX", jax.config.jax_compilation_cache_max_size)
jax.jit(lambda x: x * 2 + 1)(1.0).block_until_ready()
"""


def _probe(tmp_path, **env):
  settings = dict(XDG_CACHE_HOME=str(tmp_path / "xdg"),
                  HOME=str(tmp_path / "home"), JAX_COMPILATION_CACHE_DIR=None,
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=None)
  env = helpers.subprocess_env(**{**settings, **env})
  proc = subprocess.run([sys.executable, "-c", _PROBE], env=env,
                        capture_output=True, text=True, timeout=120)
  values = dict(line.split(" ", 1) for line in proc.stdout.splitlines()
                if line.split(" ", 1)[0] in ("PATH", "MIN", "MAX"))
  return proc, values


def _entries(folder) -> list[str]:
  if not os.path.isdir(folder):
    return []
  return sorted(n for n in os.listdir(folder) if n.endswith("-cache"))


def test_default_folder_is_under_the_user_cache_and_fills(tmp_path):
  proc, values = _probe(tmp_path)
  assert proc.returncode == 0, proc.stderr
  folder = str(tmp_path / "xdg" / "mixlin_jax" / "jax")
  assert values["PATH"] == folder
  assert float(values["MIN"]) == 0.0  # quick compiles are cached too
  assert int(values["MAX"]) > 0  # a cap: reads and writes are file-locked
  assert _entries(folder), "the jitted program should be in the cache"


def test_jax_variable_chooses_the_folder(tmp_path):
  proc, values = _probe(tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine"))
  assert proc.returncode == 0, proc.stderr
  assert values["PATH"] == str(tmp_path / "mine")
  assert _entries(tmp_path / "mine")
  assert int(values["MAX"]) == -1  # JAX's own default: no cap on a chosen folder
  assert not os.path.exists(tmp_path / "xdg" / "mixlin_jax")


def test_switched_off_writes_nothing(tmp_path):
  proc, values = _probe(tmp_path, MIXLIN_JAX_CACHE="off")
  assert proc.returncode == 0, proc.stderr
  assert values["PATH"] == "None"
  assert not os.path.exists(tmp_path / "xdg" / "mixlin_jax")


def test_bad_switch_value_names_the_variable_and_the_values():
  from mixlin_jax import jax_cache  # pylint: disable=import-outside-toplevel
  with pytest.raises(jax_cache.CacheSettingError,
                     match=r"MIXLIN_JAX_CACHE='maybe': expected one of on"):
    jax_cache.switched_on({"MIXLIN_JAX_CACHE": "maybe"})
  assert jax_cache.switched_on({}) and not jax_cache.switched_on(
      {"MIXLIN_JAX_CACHE": "OFF"})


def test_second_run_of_a_config_compiles_nothing_new(tmp_path):
  """JAX writes an entry for every program it had to compile; a second run
  of the same config in a new workdir must find every one of them."""
  folder = str(tmp_path / "xdg" / "mixlin_jax" / "jax")
  env = helpers.subprocess_env(
      XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_COMPILATION_CACHE_DIR=None,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=None)
  first = helpers.run_py(helpers.tiny_flags() + [f"--workdir={tmp_path}/a"],
                         env=env)
  assert first.returncode == 0, first.stderr
  after_first = _entries(folder)
  assert len(after_first) >= 3  # train step, evaluation, linearity at least
  second = helpers.run_py(helpers.tiny_flags() + [f"--workdir={tmp_path}/b"],
                          env=env)
  assert second.returncode == 0, second.stderr
  assert _entries(folder) == after_first


def test_run_py_flag_switches_it_off(tmp_path):
  env = helpers.subprocess_env(
      XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_COMPILATION_CACHE_DIR=None)
  proc = helpers.run_py(helpers.tiny_flags() + [f"--workdir={tmp_path}/a",
                                                "--nocompilation_cache"],
                        env=env)
  assert proc.returncode == 0, proc.stderr
  assert not os.path.exists(tmp_path / "xdg" / "mixlin_jax")
