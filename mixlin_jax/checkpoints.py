"""Per-epoch Orbax checkpoints: save, resume from the newest good one, reload any.

Layout: ``<workdir>/checkpoints/<epoch>/{state,metrics}``, written by an
Orbax ``CheckpointManager`` (atomic: a save lands under a temporary name,
``<epoch>.orbax-checkpoint-tmp*``, and is renamed when complete; unfinished
temporaries, e.g. of a killed run, are deleted on the next start).
``<epoch>`` counts *completed* epochs, so checkpoint 3 holds the state after
three epochs and resuming from it starts epoch index 3.

Integrity: Orbax notices missing or truncated files but not every flipped
byte (a damaged compressed chunk can decode to wrong numbers), so each save
also records a SHA-256 of the state's arrays and of the epoch record inside
the metrics item; every restore recomputes it and refuses a checkpoint
whose data no longer matches. A state with NaN/Inf is refused at save time
(:class:`NonFiniteStateError`): no checkpoint ever holds a diverged state.

A checkpoint that Orbax lists but that cannot be restored or fails the
check (truncated, deleted or garbled files, a disk error) is moved to
``<workdir>/broken_checkpoints/<epoch>-<time>`` with a warning and the
previous one is tried: nothing broken is ever loaded as if it were good,
and nothing is deleted. A checkpoint that is readable but holds a state of
another layout (a different model, resumed with ``--allow_config_change``)
is not moved: :class:`CheckpointError` says so.

Test-only hook (off unless set): ``MIXLIN_TEST_CHECKPOINT_COMMIT_DELAY_S``
makes every save pause that many seconds after its data is written and
before the final rename, so a test can kill the process while a checkpoint
is half-committed. It is Orbax's own atomic rename with a pause in front,
given to the manager through its ``temporary_path_class`` option (nothing
of Orbax is patched). Never set it for real runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import types
from typing import Any, Iterator
import warnings

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

# Key of the integrity record inside the saved metrics JSON (stripped on
# restore, so callers see exactly the record they saved).
INTEGRITY_KEY = "_mixlin_integrity"
BROKEN_SUBDIR = "broken_checkpoints"
COMMIT_DELAY_ENV = "MIXLIN_TEST_CHECKPOINT_COMMIT_DELAY_S"


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was required, or one that cannot be used."""


class CheckpointReadError(CheckpointError):
  """Orbax could not read a checkpoint (missing, truncated or garbled files)."""


class CheckpointIntegrityError(CheckpointError):
  """A checkpoint's data does not match the digest recorded when it was saved."""


class NonFiniteStateError(CheckpointError, FloatingPointError):
  """Refused to save a state holding NaN or Inf."""


def abstract_like(tree: Any) -> Any:
  """Shape/dtype/sharding skeleton of ``tree``, the target for a restore."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


# -- digests ------------------------------------------------------------------
def _path_name(path) -> str:
  """'params/conv1/kernel' for a key path, whatever the container types.

  A dataclass attribute, a dict key and a sequence index all become plain
  names, so a state restored into a ``TrainState`` and one restored as
  nested dicts (no target) have the same names.
  """
  parts = []
  for key in path:
    for attr in ("name", "key", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _host_arrays(tree: Any) -> list[tuple[str, np.ndarray]] | None:
  """(name, host copy) of every array leaf, sorted by name.

  Replicated arrays are read from one local replica (this also works when
  the array spans several processes). None if a leaf is sharded across
  processes (no process holds it whole): such states are not digested.
  """
  named, fetch = [], []
  for path, leaf in jax.tree.flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array):
      if leaf.is_fully_replicated:
        leaf = leaf.addressable_data(0)
      elif not leaf.is_fully_addressable:
        return None
    named.append(_path_name(path))
    fetch.append(leaf)
  host = jax.device_get(fetch)
  return sorted(((n, np.asarray(h)) for n, h in zip(named, host)),
                key=lambda item: item[0])


def _layout_digest(arrays: list[tuple[str, np.ndarray]]) -> str:
  h = hashlib.sha256()
  for name, a in arrays:
    h.update(f"{name}|{a.dtype.str}|{a.shape};".encode())
  return h.hexdigest()


def _data_digest(arrays: list[tuple[str, np.ndarray]], metrics: dict) -> str:
  h = hashlib.sha256()
  for name, a in arrays:
    h.update(f"{name}|{a.dtype.str}|{a.shape};".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  h.update(_canonical_json(metrics).encode())
  return h.hexdigest()


def _canonical_json(obj: Any) -> str:
  return json.dumps(obj, sort_keys=True, allow_nan=True)


def _first_nonfinite(arrays: list[tuple[str, np.ndarray]]) -> str | None:
  for name, a in arrays:
    if jax.dtypes.issubdtype(a.dtype, np.inexact) and not np.all(
        np.isfinite(a)):
      return name
  return None


class Checkpoints:
  """Thin wrapper over ``ocp.CheckpointManager`` for (state, metrics) pairs.

  Args:
    directory: where epoch folders live (created if needed unless
      ``read_only``).
    max_to_keep: keep this many newest epochs; ``0`` or ``None`` keeps all.
    read_only: for post-hoc analysis: never create, write, move or clean up.
    async_save: let saves overlap the next epoch's training (the manager
      waits for a pending save before starting the next one, and
      :meth:`close` waits for the last).
  """

  def __init__(self, directory: str, *, max_to_keep: int | None = None,
               read_only: bool = False, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep or None,
        create=not read_only,
        read_only=read_only,
        save_interval_steps=0 if read_only else 1,
        enable_async_checkpointing=async_save and not read_only,
        cleanup_tmp_directories=not read_only,
        # Do not read every checkpoint's metrics and metadata up front (we
        # use neither): faster, and a garbled one cannot stop the others
        # from being listed.
        lightweight_initialize=True,
        # None (Orbax's choice for the file system) unless a test sets the
        # commit-delay hook.
        temporary_path_class=_commit_delay_class(),
    )
    self._manager = None
    with _expected_read_only_notice_dropped():
      self._manager = self._setting_aside_unreadable_metrics(
          lambda: ocp.CheckpointManager(self.directory, options=self._options))

  def _setting_aside_unreadable_metrics(self, fn):
    """``fn()``; if it fails on a garbled metrics JSON, set that aside, retry.

    ``CheckpointManager.reload`` (and its constructor, without
    ``lightweight_initialize``) parse every checkpoint's metrics file.
    """
    try:
      return fn()
    except Exception:  # pylint: disable=broad-except
      broken = self._unreadable_metrics()
      if not broken:
        raise
      for epoch, error in broken:
        if self.read_only:
          raise CheckpointError(
              f"Checkpoint {os.path.join(self.directory, str(epoch))} is "
              f"damaged ({describe_error(error)}); move that folder out of "
              f"{self.directory} to read the others.") from error
        self._quarantine(epoch, error, reload=False)
      return fn()

  # -- listing --------------------------------------------------------------
  def epochs(self) -> list[int]:
    """Completed epochs with a finalized checkpoint, oldest first."""
    return sorted(self._manager.all_steps())

  def latest_epoch(self) -> int | None:
    return self._manager.latest_step()

  # -- writing --------------------------------------------------------------
  def save(self, epoch: int, state: Any, metrics: dict) -> None:
    """Starts writing ``state`` and its epoch ``metrics`` (JSON) as ``epoch``.

    Raises:
      NonFiniteStateError: ``state`` holds NaN or Inf (nothing is written).
    """
    metrics = json.loads(_canonical_json(metrics))  # exactly what restores
    arrays = _host_arrays(state)
    payload = dict(metrics)
    # A state sharded across processes (no process holds it whole) is saved
    # without a digest.
    payload[INTEGRITY_KEY] = {"sha256": None}
    if arrays is not None:
      bad = _first_nonfinite(arrays)
      if bad is not None:
        latest = self.latest_epoch()
        raise NonFiniteStateError(
            f"Refusing to save the state of epoch {epoch}: {bad} holds NaN "
            "or Inf. Nothing was written; " + (
                f"the last good checkpoint is epoch {latest} in "
                f"{self.directory}." if latest is not None else
                f"no checkpoint was saved in {self.directory} yet.") +
            " Lower train.learning_rate or mixup.consistency_weight, or "
            "check the data.")
      payload[INTEGRITY_KEY] = {
          "sha256": _data_digest(arrays, metrics),
          "layout_sha256": _layout_digest(arrays),
          "arrays": len(arrays),
      }
    with _interrupts_deferred():
      self._manager.save(
          epoch,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  metrics=ocp.args.JsonSave(payload)),
          force=True)

  def wait(self, *, abandon_on_interrupt: bool = False) -> None:
    """Waits for the save in flight.  Ctrl-C during the wait is raised once
    the save is complete, or at once with ``abandon_on_interrupt`` (the
    save is then left unfinished; the next start deletes it)."""
    if abandon_on_interrupt:
      self._manager.wait_until_finished()
      return
    with _interrupts_deferred():
      self._manager.wait_until_finished()

  def close(self) -> None:
    with _interrupts_deferred():
      self._manager.wait_until_finished()
      self._manager.close()

  # -- reading --------------------------------------------------------------
  def restore(self, epoch: int, target: Any, *,
              verify: bool = True) -> tuple[Any, dict]:
    """Restores ``(state, metrics)`` of ``epoch`` into ``target``'s structure.

    ``target`` may be concrete arrays or an :func:`abstract_like` skeleton
    (or None: the arrays as saved); its shardings decide where the arrays
    land, so a checkpoint written on 8 GPUs restores on a laptop CPU.

    Raises:
      CheckpointReadError: Orbax cannot read it (missing, truncated or
        garbled files; or a ``target`` of another layout).
      CheckpointIntegrityError: ``verify`` and the arrays or the record
        differ from what was saved (the files were damaged).
    """
    path = os.path.join(self.directory, str(epoch))
    failure = None
    with _muffled_abandoned_reads():
      try:
        restored = self._manager.restore(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_like(target)),
                metrics=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        # Orbax raises many types (ValueError, FileNotFoundError, tensorstore
        # errors...) for damaged data. Only the message is kept: the
        # traceback would keep Orbax's abandoned reads alive (see below).
        failure = describe_error(e)
    if failure is not None:
      raise CheckpointReadError(f"checkpoint {path} is unreadable: {failure}")
    if restored["metrics"] is None:
      raise CheckpointReadError(f"checkpoint {path} has no metrics item")
    state = restored["state"]
    metrics = dict(restored["metrics"] or {})
    integrity = metrics.pop(INTEGRITY_KEY, None)
    if verify:
      self._verify(epoch, state, metrics, integrity)
    return state, metrics

  def _verify(self, epoch: int, state: Any, metrics: dict,
              integrity: dict | None) -> None:
    if integrity is None:
      log.warning("Checkpoint of epoch %d in %s has no integrity record "
                  "(written by an older mixlin_jax); loaded unverified.",
                  epoch, self.directory)
      return
    arrays = _host_arrays(state)
    if arrays is None or integrity.get("sha256") is None:
      return
    if _layout_digest(arrays) != integrity.get("layout_sha256"):
      # Restored into another structure or dtype than was saved (a partial
      # or converted restore): the digest cannot apply.
      log.info("Checkpoint of epoch %d restored into a different layout; "
               "integrity not checked.", epoch)
      return
    if _data_digest(arrays, metrics) != integrity.get("sha256"):
      raise CheckpointIntegrityError(
          f"checkpoint {os.path.join(self.directory, str(epoch))} is "
          "damaged: its data does not match the SHA-256 recorded when it "
          "was saved")

  def restore_metrics(self, epoch: int) -> dict:
    """The epoch record saved with ``epoch`` (not verified: no arrays read).

    Raises:
      CheckpointReadError: the metrics file is missing or unreadable.
    """
    try:
      restored = self._manager.restore(
          epoch, args=ocp.args.Composite(metrics=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointReadError(
          f"checkpoint {os.path.join(self.directory, str(epoch))} is "
          f"unreadable: {describe_error(e)}") from e
    if restored["metrics"] is None:
      raise CheckpointReadError(
          f"checkpoint {os.path.join(self.directory, str(epoch))} has no "
          "metrics item")
    metrics = dict(restored["metrics"])
    metrics.pop(INTEGRITY_KEY, None)
    return metrics

  def restore_latest_good(self, target: Any) -> tuple[int, Any, dict] | None:
    """Newest checkpoint that restores cleanly, or None if there is none.

    Broken checkpoints on the way are quarantined (moved aside, never
    deleted) with a warning; in read-only mode they are only reported.

    Raises:
      CheckpointError: a checkpoint is readable but was written for another
        state layout than ``target`` (another model); nothing is moved.
    """
    skipped, tried = [], set()
    while True:
      # Re-listed each time: setting one aside may set others aside too.
      candidates = [e for e in self.epochs() if e not in tried]
      if not candidates:
        break
      epoch = max(candidates)
      tried.add(epoch)
      try:
        state, metrics = self.restore(epoch, target)
      except CheckpointError as e:
        # Unusable, unless the checkpoint is intact and of another model.
        mismatch = self._layout_mismatch(epoch, target)
        if mismatch:
          raise CheckpointError(
              f"Checkpoint {os.path.join(self.directory, str(epoch))} holds "
              f"a state of another layout than this run builds ({mismatch})."
              " Was the model changed with --allow_config_change? Use "
              "another --workdir for a different model.") from e
        self._quarantine(epoch, e)
        skipped.append(epoch)
        continue
      return epoch, state, metrics
    if skipped:
      log.warning("No usable checkpoint left in %s: starting from scratch.",
                  self.directory)
    return None

  # -- damage handling ------------------------------------------------------
  def _unreadable_metrics(self) -> list[tuple[int, Exception]]:
    """Epoch folders whose metrics JSON cannot be parsed."""
    out = []
    try:
      names = os.listdir(self.directory)
    except OSError:
      return out
    for name in sorted(names, key=lambda n: (len(n), n)):
      path = os.path.join(self.directory, name, "metrics", "metrics")
      if not name.isdigit() or not os.path.lexists(path):
        continue
      try:
        with open(path, "rb") as f:
          json.loads(f.read().decode("utf-8"))
      except Exception as e:  # pylint: disable=broad-except
        out.append((int(name), CheckpointReadError(
            f"its metrics file {path} is unreadable: {describe_error(e)}")))
    return out

  def _layout_mismatch(self, epoch: int, target: Any) -> str | None:
    """How the stored state's layout differs from ``target``'s, if it does.

    None when they agree, when there is no target, or when the stored
    metadata itself is unreadable (then the checkpoint is simply broken).
    """
    if target is None:
      return None
    try:
      stored = ocp.StandardCheckpointHandler().metadata(
          epath.Path(self.directory) / str(epoch) / "state")
      have = {_path_name(p): tuple(m.shape)
              for p, m in jax.tree.flatten_with_path(stored)[0]}
    except Exception:  # pylint: disable=broad-except
      return None
    want = {_path_name(p): tuple(np.shape(x))
            for p, x in jax.tree.flatten_with_path(target)[0]}
    if not have:
      return None
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    shapes = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    parts = []
    if missing:
      parts.append(f"missing {', '.join(missing[:3])}"
                   + (f" and {len(missing) - 3} more" if len(missing) > 3
                      else ""))
    if extra:
      parts.append(f"unexpected {', '.join(extra[:3])}"
                   + (f" and {len(extra) - 3} more" if len(extra) > 3
                      else ""))
    if shapes:
      parts.append(", ".join(f"{k} has shape {have[k]}, not {want[k]}"
                             for k in shapes[:3]))
    return "; ".join(parts) or None

  def _quarantine(self, epoch: int, error: Exception, *,
                  reload: bool = True) -> None:
    src = os.path.join(self.directory, str(epoch))
    if self.read_only:
      log.warning("Checkpoint %s is unreadable and was skipped: %s", src,
                  describe_error(error))
      return
    if not os.path.lexists(src):
      return
    dest_root = os.path.join(os.path.dirname(self.directory), BROKEN_SUBDIR)
    os.makedirs(dest_root, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = os.path.join(dest_root, f"{epoch}-{stamp}")
    n = 1
    while os.path.lexists(dest):
      n += 1
      dest = os.path.join(dest_root, f"{epoch}-{stamp}-{n}")
    shutil.move(src, dest)
    if reload and self._manager is not None:
      self._setting_aside_unreadable_metrics(self._manager.reload)
    log.warning(
        "Checkpoint of epoch %d is unusable (%s); moved it to %s (nothing "
        "was deleted) and falling back to the previous one.", epoch,
        describe_error(error), dest)


@contextlib.contextmanager
def _expected_read_only_notice_dropped() -> Iterator[None]:
  """Drops Orbax's "Given directory is read only" warning while opening.

  A read-only manager is what this module asks for (post-hoc analysis); a
  warning about it on every run looks like an error. Only that message is
  dropped, only while the manager is built.
  """
  def keep(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")

  orbax_log = logging.getLogger("absl")  # Orbax logs through absl.logging
  orbax_log.addFilter(keep)
  try:
    yield
  finally:
    orbax_log.removeFilter(keep)


# Longest wait for the reads Orbax abandons after a failed restore.
_ABANDONED_READS_TIMEOUT_S = 30.0


@contextlib.contextmanager
def _muffled_abandoned_reads() -> Iterator[None]:
  """Drops the noise Orbax leaves after a failed restore, and waits it out.

  When one array read fails, Orbax closes its event loop with the other
  reads still in flight in TensorStore's threads. As each finishes it
  fails to wake the closed loop ("Event loop is closed"), and once its
  task is freed Python prints the coroutine's error with a page of
  TensorStore spec apiece; asyncio adds "Task was destroyed but it is
  pending" and "Future exception was never retrieved". They all repeat the
  one failure that is reported cleanly. They come from other threads at
  unpredictable times, so this waits, inside the scope that drops them,
  until no task of a closed event loop is left; only then are Python's
  hooks put back (nothing is changed for the rest of the process).
  """
  old_hook = sys.unraisablehook
  asyncio_log = logging.getLogger("asyncio")
  old_disabled = asyncio_log.disabled

  def hook(unraisable):
    if isinstance(unraisable.object, types.CoroutineType) or (
        isinstance(unraisable.exc_value, RuntimeError)
        and "Event loop is closed" in str(unraisable.exc_value)):
      return
    old_hook(unraisable)

  sys.unraisablehook = hook
  asyncio_log.disabled = True
  try:
    yield
  finally:
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message="coroutine .* never awaited",
                              category=RuntimeWarning)
      deadline = time.monotonic() + _ABANDONED_READS_TIMEOUT_S
      while _count_abandoned_tasks() and time.monotonic() < deadline:
        time.sleep(0.01)
      gc.collect()
    sys.unraisablehook = old_hook
    asyncio_log.disabled = old_disabled


def _count_abandoned_tasks() -> int:
  """Collects garbage; counts live asyncio tasks whose event loop is closed."""
  gc.collect()
  return sum(1 for o in gc.get_objects()
             if isinstance(o, asyncio.Task) and not o.done()
             and o.get_loop().is_closed())


def describe_error(error: BaseException) -> str:
  """One line: the root cause of ``error`` (Orbax wraps TensorStore's).

  For messages and warnings about unreadable checkpoints: the type and text
  of the innermost cause, without TensorStore's pages of spec.
  """
  root, seen = error, 0
  while root.__cause__ is not None and seen < 10:  # "raise ... from"
    root, seen = root.__cause__, seen + 1
  text = str(root).split(". See full TensorStore details")[0]
  text = " ".join(text.split(" [tensorstore_spec")[0].split())
  if not isinstance(root, CheckpointError):
    text = f"{type(root).__name__}: {text}"
  return text if len(text) < 500 else text[:500] + "..."


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
  """Ctrl-C (SIGINT) inside the block is raised when the block ends.

  Orbax handles an interrupt in the middle of its own wait badly: in
  ``wait_until_finished`` it logs a traceback and forgets the checkpoint
  it was finalizing, which still lands on disk (a run said "no epoch
  saved" with epoch 1 there; ``tests/test_cli.py`` reproduces it with the
  commit-delay hook).  So the first SIGINT is only recorded, and
  ``KeyboardInterrupt`` is raised after Orbax returns; a second one is
  raised at once, to abandon a wait that hangs.  Outside the main thread,
  or where SIGINT is ignored or handled by someone else, nothing changes.
  """
  if (threading.current_thread() is not threading.main_thread()
      or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
    yield
    return
  received = []

  def record(signum, frame):
    received.append(signum)
    if len(received) > 1:
      raise KeyboardInterrupt

  signal.signal(signal.SIGINT, record)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  if received:
    raise KeyboardInterrupt


# -- test-only hook -------------------------------------------------------------
def _commit_delay_class() -> type | None:
  """Orbax's atomic rename, paused first, if ``COMMIT_DELAY_ENV`` is set."""
  delay = os.environ.get(COMMIT_DELAY_ENV)
  if not delay:
    return None
  delay = float(delay)
  base = ocp.path.atomicity.AtomicRenameTemporaryPath

  class DelayedCommitTemporaryPath(base):
    """Pauses before committing a step folder (test hook)."""

    async def finalize(self, *args, **kwargs):
      if self.get_final().name.isdigit():  # the epoch folder, not its items
        log.warning("%s: pausing %.1f s before committing %s (test hook).",
                    COMMIT_DELAY_ENV, delay, self.get())
        await asyncio.sleep(delay)
      return await super().finalize(*args, **kwargs)

  return DelayedCommitTemporaryPath
