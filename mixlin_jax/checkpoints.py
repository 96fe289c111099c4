"""Per-epoch Orbax checkpoints: save, resume from the newest good one, reload any.

Layout: ``<workdir>/checkpoints/<epoch>/{state,metrics}``, written by an
Orbax ``CheckpointManager`` (atomic: a save lands under a temporary name and
is renamed when complete, and unfinished temporaries are cleaned up on the
next start). ``<epoch>`` counts *completed* epochs, so checkpoint 3 holds the
state after three epochs and resuming from it starts epoch index 3.

A checkpoint that Orbax lists but cannot restore (truncated or deleted files,
a disk error) is moved to ``<workdir>/broken_checkpoints/`` with a warning
and the previous one is tried: nothing broken is ever loaded as if it were
good, and nothing is deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was required."""


def abstract_like(tree: Any) -> Any:
  """Shape/dtype/sharding skeleton of ``tree``, the target for a restore."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpoints:
  """Thin wrapper over ``ocp.CheckpointManager`` for (state, metrics) pairs.

  Args:
    directory: where epoch folders live (created if needed unless
      ``read_only``).
    max_to_keep: keep this many newest epochs; ``0`` or ``None`` keeps all.
    read_only: for post-hoc analysis: never create, write or clean up.
    async_save: let saves overlap the next epoch's training (the manager
      waits for a pending save before starting the next one, and
      :meth:`close` waits for the last).
  """

  def __init__(self, directory: str, *, max_to_keep: int | None = None,
               read_only: bool = False, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep or None,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=async_save and not read_only,
        cleanup_tmp_directories=not read_only,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  # -- listing --------------------------------------------------------------
  def epochs(self) -> list[int]:
    """Completed epochs with a finalized checkpoint, oldest first."""
    return sorted(self._manager.all_steps())

  def latest_epoch(self) -> int | None:
    return self._manager.latest_step()

  # -- writing --------------------------------------------------------------
  def save(self, epoch: int, state: Any, metrics: dict) -> None:
    """Starts writing ``state`` and its epoch ``metrics`` (JSON) as ``epoch``."""
    self._manager.save(
        epoch,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                metrics=ocp.args.JsonSave(metrics)),
        force=True)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  # -- reading --------------------------------------------------------------
  def restore(self, epoch: int, target: Any) -> tuple[Any, dict]:
    """Restores ``(state, metrics)`` of ``epoch`` into ``target``'s structure.

    ``target`` may be concrete arrays or an :func:`abstract_like` skeleton;
    its shardings decide where the arrays land, so a checkpoint written on
    8 GPUs restores on a laptop CPU.
    """
    restored = self._manager.restore(
        epoch,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(target)),
            metrics=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["metrics"] or {})

  def restore_metrics(self, epoch: int) -> dict:
    restored = self._manager.restore(
        epoch, args=ocp.args.Composite(metrics=ocp.args.JsonRestore()))
    return dict(restored["metrics"] or {})

  def restore_latest_good(self, target: Any) -> tuple[int, Any, dict] | None:
    """Newest checkpoint that restores cleanly, or None if there is none.

    Broken checkpoints on the way are quarantined (moved aside, never
    deleted) with a warning; in read-only mode they are only reported.
    """
    for epoch in reversed(self.epochs()):
      try:
        state, metrics = self.restore(epoch, target)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax raises many types (ValueError, FileNotFoundError, tensorstore
        # errors...) for damaged data; any of them means "not usable".
        self._quarantine(epoch, e)
        continue
      return epoch, state, metrics
    return None

  def _quarantine(self, epoch: int, error: Exception) -> None:
    src = os.path.join(self.directory, str(epoch))
    if self.read_only:
      log.warning("Checkpoint %s is unreadable and was skipped: %s", src,
                  _short(error))
      return
    dest_root = os.path.join(os.path.dirname(self.directory),
                             "broken_checkpoints")
    os.makedirs(dest_root, exist_ok=True)
    dest = os.path.join(dest_root, f"{epoch}-{int(time.time())}")
    shutil.move(src, dest)
    self._manager.reload()
    log.warning(
        "Checkpoint of epoch %d is unreadable (%s); moved it to %s and "
        "falling back to the previous one.", epoch, _short(error), dest)


def _short(error: Exception) -> str:
  text = f"{type(error).__name__}: {error}"
  return text if len(text) < 300 else text[:300] + "..."
