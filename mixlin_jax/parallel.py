"""One 1-D data mesh over every device of every process, and its shardings.

Data parallelism is expressed with ``jit`` and ``NamedSharding`` (the
replacement for ``pmap``): one mesh with a single axis ``"data"`` spans all
devices of all processes (``jax.devices()``, not ``jax.local_devices()``).
Parameters, optimizer state, the EMA teacher and the device-resident dataset
are replicated on it; each step's global batch is sharded along ``"data"``.
XLA inserts the collectives itself. The same code therefore runs on one CPU,
one GPU, eight GPUs, a TPU VM, or several hosts after
``jax.distributed.initialize()``.

How each process gets its share of the data
-------------------------------------------
There is no per-process input pipeline. The datasets studied here (CIFAR,
SVHN, 8x8 digits) are small as uint8 (CIFAR-10's 50,000 training images are
150 MB), so every process reads the *same* arrays (same source, same seed,
same split) and :func:`put_replicated` places one full copy on each of its
local devices. The epoch's batch order is a table of indices computed on
device from ``(seed, epoch)`` and identical everywhere. Inside the jitted
step the index vector of the global batch is constrained to be sharded
(:func:`shard_batch`), so each device gathers, augments and normalises only
its own ``batch / num_devices`` images from its local copy of the dataset.
Per step nothing is read from disk, nothing crosses the host-device
boundary and no image crosses the network: only the usual gradient
all-reduce (plus the small mixup all-gathers below) travels between devices.

This is our equivalent of process-local loading (``jax.make_array_from_
process_local_data`` fed by a per-host pipeline): the shard a device works
on is selected by index where the data already is, instead of being read
and sent by its host. It trades device memory (one dataset copy per device)
for simplicity, exact reproducibility and resumability: the batches are a
pure function of ``(seed, epoch, step)`` and do not depend on the number of
processes or devices. Datasets too large to replicate would need a real
per-process pipeline; none of those studied here is.

Semantics (written down because they affect results)
-----------------------------------------------------
* Gradients are means over the *global* batch, whatever the device count.
* BatchNorm statistics in training mode are computed over the *global*
  batch ("synchronised" BatchNorm: the mean and variance reductions over the
  sharded batch axis become all-reduces), so a step on 8 devices computes
  the same numbers as on 1 device, up to float reassociation. This differs
  from ``pmap``-style per-device BatchNorm, whose statistics come from
  ``batch / num_devices`` examples.
* Mixup tuples are formed within the global batch (random permutations of
  the whole batch, drawn from a key that does not depend on the device
  count), so a tuple may combine images held by different devices and the
  tuples are the same on any number of devices; the cost is one all-gather
  of the batch per mixed input, small next to the convolutions.
* Random numbers (augmentation, mixing weights) come from keys folded from
  the config seed and are split-invariant under sharding (JAX's partitionable
  threefry), so they do not depend on the device count either.
* The linearity evaluation (:class:`mixlin_jax.linearity.LinearityEvaluator`
  with ``mesh=``) shards its tuple batches over the same mesh.

``tests/test_parallel.py`` checks that 1 and 8 (fake CPU) devices give the
same loss and parameters, and that two real processes on one machine (CPU
collectives over gloo) train, checkpoint, resume and end with the parameters
of a single-process run.
"""

from __future__ import annotations

import os
import zlib

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else None


def maybe_initialize_distributed(enabled: bool | None = None) -> None:
  """Calls ``jax.distributed.initialize()`` when asked or when needed.

  Must run before anything touches a JAX backend (``experiments/run.py``
  calls it first thing).

  ``enabled=None`` (``--distributed=auto``) initializes only when the
  environment names several processes: ``JAX_COORDINATOR_ADDRESS`` set, or
  ``JAX_NUM_PROCESSES`` > 1. On a single host (a laptop, a one- or
  multi-GPU workstation, a single TPU VM, Colab) it does nothing, and no
  setting is needed. ``enabled=True`` (``--distributed=yes``) always
  initializes: on Cloud TPU pod slices, Slurm and Open MPI, JAX then detects
  the coordinator, the process count and the process id by itself.

  Elsewhere set on every process (JAX itself only reads the first and the
  last; the two in the middle are this project's convention)::

      JAX_COORDINATOR_ADDRESS=10.0.0.1:1234   # host of process 0, a free port
      JAX_NUM_PROCESSES=2
      JAX_PROCESS_ID=0                        # 0 .. JAX_NUM_PROCESSES - 1
      JAX_LOCAL_DEVICE_IDS=0,1,2,3            # optional
  """
  num_processes = _env_int("JAX_NUM_PROCESSES")
  if enabled is None:
    enabled = bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) or (
        num_processes or 1) > 1
  if enabled and not jax.distributed.is_initialized():
    jax.distributed.initialize(
        coordinator_address=os.environ.get("JAX_COORDINATOR_ADDRESS") or None,
        num_processes=num_processes,
        process_id=_env_int("JAX_PROCESS_ID"))


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named ``data`` over all (global) devices."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def fingerprint(tree) -> np.ndarray:
  """CRC32 of every leaf's shape, dtype and bytes (uint32 vector).

  Cheap (about 1 s/GB); used to check that all processes hold the same data.
  """
  out = []
  for leaf in jax.tree.leaves(tree):
    a = np.ascontiguousarray(np.asarray(leaf))
    crc = zlib.crc32(f"{a.shape}{a.dtype.str}".encode())
    out.append(zlib.crc32(a.reshape(-1).view(np.uint8), crc))
  return np.asarray(out, np.uint32)


def put_replicated(tree, mesh: Mesh, *, check_identical: bool = True):
  """Places host arrays (identical on every process) replicated on the mesh.

  ``jax.make_array_from_process_local_data`` is used rather than
  ``device_put``: with a replicated sharding each process's "local data" is
  the whole array, which it copies to its own devices only, so the same
  call works when the mesh spans several processes (nothing is sent
  between hosts). Its correctness rests on every process passing the same
  values; with several processes and ``check_identical`` that is verified
  (a CRC32 per leaf, compared across processes) and a mismatch, e.g. hosts
  with different copies of a dataset, raises instead of training on
  inconsistent replicas.
  """
  if check_identical and jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.assert_equal(
        fingerprint(tree),
        "put_replicated: processes passed different values (CRC32 per leaf "
        "differs); every process must load the same data and config.")
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      tree)


def shard_batch(tree, mesh: Mesh):
  """Inside jit: constrains a global batch to be split along ``data``."""
  return jax.lax.with_sharding_constraint(tree, batch_sharded(mesh))


def is_main_process() -> bool:
  return jax.process_index() == 0
