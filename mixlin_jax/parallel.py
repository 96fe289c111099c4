"""One 1-D data mesh over every device of every process, and its shardings.

Data parallelism is expressed with ``jit`` and ``NamedSharding`` (the
replacement for ``pmap``): parameters, optimizer state and the device-resident
dataset are replicated; each step's global batch is sharded along the mesh
axis ``"data"``. XLA then inserts the collectives itself, which gives these
semantics (written down because they affect results):

* Gradients are means over the *global* batch, whatever the device count.
* BatchNorm statistics in training mode are computed over the *global*
  batch ("synchronised" BatchNorm): a step on 8 devices computes the same
  numbers as on 1 device, up to float reassociation.
* Mixup tuples are formed within the global batch (permutations of the whole
  batch), so the tuples do not depend on the device count either; the cost is
  one all-gather of the batch per mixed input, small next to the convolutions.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(enabled: bool | None = None) -> None:
  """Calls ``jax.distributed.initialize()`` when asked or when needed.

  ``enabled=None`` initializes when the environment describes several
  processes (a TPU pod slice, or ``JAX_COORDINATOR_ADDRESS`` /
  ``JAX_NUM_PROCESSES`` set by a launcher); on a single host it does
  nothing, so laptops and one-GPU workstations need no setting.
  """
  if enabled is None:
    enabled = bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) or int(
        os.environ.get("JAX_NUM_PROCESSES", "1")) > 1
  if enabled and not jax.distributed.is_initialized():
    jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named ``data`` over all (global) devices."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def put_replicated(tree, mesh: Mesh):
  """Places host arrays (identical on every process) replicated on the mesh.

  ``make_array_from_process_local_data`` is used rather than ``device_put``
  so the same call works when the mesh spans several processes.
  """
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      tree)


def shard_batch(tree, mesh: Mesh):
  """Inside jit: constrains a global batch to be split along ``data``."""
  return jax.lax.with_sharding_constraint(tree, batch_sharded(mesh))


def is_main_process() -> bool:
  return jax.process_index() == 0
