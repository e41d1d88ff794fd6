"""Checkpoints with Orbax's `CheckpointManager`: the TrainState plus JSON metadata.

The metadata holds the data position (epoch, step within the epoch) and the running sums of the
epoch's training metrics (so a resumed epoch reports exactly what an uninterrupted one would). A
method's per-example state (FGSM-PGK's buffers) is a third item, `sample`: global arrays sharded
over the devices, so that each process saves and restores only its own examples' rows. Orbax writes
each checkpoint to a temporary directory and renames it when complete, so a kill during a save
leaves the previous checkpoint intact; unfinished temporary directories are removed on the next
start.

Damage is detected: the metadata also holds CRC-32 fingerprints of the arrays saved (the state,
and each process's rows of the per-example state), and a restore whose arrays do not match them
fails like an unreadable one (`CheckpointError`). A save that finds the disk full raises a
CheckpointError naming the disk, the directory and the free space.
"""

from __future__ import annotations

import errno
import os
import shutil
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils


# A run's checkpoints: `<workdir>/checkpoints/<step>/`; with `checkpoint.keep_best`, the best
# state on the validation split in `<workdir>/best/<step>/`.
CHECKPOINTS_DIR, BEST_DIR = "checkpoints", "best"


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored, or cannot be written."""


def fingerprint(tree: Any) -> int:
  """CRC-32 of the bytes of every array leaf of `tree`, in tree order: this process's rows of
  sharded arrays (sorted by their position), a whole array otherwise."""
  crc = 0
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      shards = sorted(leaf.addressable_shards, key=lambda s: tuple(i.start or 0 for i in s.index))
      parts = [np.asarray(s.data) for s in shards]
    else:
      parts = [np.asarray(leaf)]
    for part in parts:
      crc = zlib.crc32(np.ascontiguousarray(part).tobytes(), crc)
  return crc


def _fingerprints(tree: Any) -> list[int]:
  """`fingerprint(tree)` of every process, in process order."""
  mine = fingerprint(tree)
  if jax.process_count() == 1:
    return [mine]
  return [int(v) for v in multihost_utils.process_allgather(np.asarray(mine, np.int64))]


def _disk_full(error: BaseException) -> bool:
  """Whether `error` (or what caused it) is an out-of-space error."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(error) or "ENOSPC" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def disk_full_message(directory: str, what: str) -> str:
  """The message for a write to `directory` that found its disk full."""
  try:
    usage = shutil.disk_usage(directory)
    room = f"{usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB"
  except OSError:
    room = "free space unknown"
  return (f"{what} could not be written to {directory}: the disk holding it is full ({room}). "
          "The checkpoints written before are intact. Free space on that disk (or keep fewer "
          "checkpoints: --config.checkpoint.max_to_keep), then run the same command to resume "
          "from the last complete checkpoint.")


def check_layout(saved: dict[str, Any], current: dict[str, Any], directory: str) -> None:
  """Refuses to resume when what fixes the data order or step count (device count, batch size,
  steps per epoch, seed) differs from the checkpoint's."""
  diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k, v) != v}
  if diff:
    changes = ", ".join(f"{k}: checkpoint {a}, now {b}" for k, (a, b) in diff.items())
    raise CheckpointError(
        f"The checkpoints in {directory} were written with a different data layout ({changes}); "
        "resuming would change the data order and the step count. Resume with the same settings "
        "(on CPU, `--config.cpu_devices` sets the device count), or use a new --workdir.")


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...] | None]:
  """Each leaf's shape (None without one), keyed by its path as `a/b/0`."""
  def name(path):
    return "/".join(str(next((getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a)),
                             k)) for k in path)
  return {name(path): (tuple(leaf.shape) if hasattr(leaf, "shape") else None)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _shape_mismatches(path: str, item: str, target: Any) -> list[str]:
  """The arrays of checkpoint item `item` at `path` whose stored shape differs from `target`'s,
  as `item/array: stored S, this config T`, read from Orbax's metadata before any array is (a
  failed restore's error names whichever array a thread met first, and leaves dozens of
  tracebacks). Compared only when the stored arrays have the same paths as the target's; [] also
  when the metadata cannot be read: the restore itself then decides."""
  try:
    stored = _leaf_shapes(ocp.StandardCheckpointHandler().metadata(
        epath.Path(path) / item).tree)
  except Exception:  # pylint: disable=broad-except  (unreadable: the restore will say why)
    return []
  wanted = _leaf_shapes(target)
  if set(stored) != set(wanted):
    return []
  return [f"{item}/{k}: stored {stored[k]}, this config {v}"
          for k, v in wanted.items() if v is not None and stored[k] != v]


def saved_steps(directory: str) -> list[int]:
  """The steps of the finished checkpoints in `directory` (its sub-directories named by a step;
  Orbax's unfinished temporary ones are not), sorted; [] when there is none. Reads the listing
  only (no Orbax manager)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


class Checkpointer:
  """Saves and restores `(state, meta)` under `directory`, one sub-directory per step."""

  def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any], sample: Any = None) -> None:
    """Starts saving (asynchronously when enabled); `wait()` blocks until it is on disk.
    `sample`: the per-example state as global arrays (`SampleState.to_global`), if any. The
    arrays' fingerprints go into the metadata. A full disk (found now, or left by the previous
    asynchronous save) raises CheckpointError."""
    meta = {**meta, "fingerprints": {"state": _fingerprints(state)}}
    items = {"state": ocp.args.StandardSave(state)}
    if sample is not None:
      meta["fingerprints"]["sample"] = _fingerprints(sample)
      items["sample"] = ocp.args.StandardSave(sample)
    items["meta"] = ocp.args.JsonSave(meta)
    if step in self.all_steps():  # the same state again, with newer metadata (e.g. an epoch's
      self._manager.delete(step)  # end saved when a stop interrupted its evaluation)
    self._guard(lambda: self._manager.save(step, args=ocp.args.Composite(**items), force=True),
                "A checkpoint")

  def _guard(self, fn, what: str):
    try:
      return fn()
    except Exception as e:  # Orbax re-raises a failed background write in many wrappers.
      if _disk_full(e):
        raise CheckpointError(disk_full_message(self.directory, what)) from e
      raise

  def restore(self, target_state: Any, step: int | None = None, sample_target: Any = None
              ) -> tuple[Any, dict[str, Any]] | tuple[Any, dict[str, Any], Any]:
    """Restores `(state, meta)` at `step` (default: latest) into the structure of `target_state`;
    with `sample_target` (`SampleState.abstract_global`), `(state, meta, sample)`.

    Raises CheckpointError naming the checkpoint directory when it is unreadable or does not match
    the config (another model, method or optimiser).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    path = os.path.join(self.directory, str(step))
    # The state only: the per-example rows' count depends on the data layout (device count),
    # which `check_layout` names after the restore.
    mismatched = _shape_mismatches(path, "state", target_state)
    if mismatched:
      raise CheckpointError(
          f"The checkpoint at {path} holds arrays of other shapes than this config's "
          f"({len(mismatched)} of them; {'; '.join(mismatched[:3])}): it was written by a "
          "different config (compare the workdir's config.json).")
    try:
      items = {"state": ocp.args.StandardRestore(target_state), "meta": ocp.args.JsonRestore()}
      if sample_target is not None:
        items["sample"] = ocp.args.StandardRestore(sample_target)
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Orbax raises many types for unreadable or mismatched trees.
      raise CheckpointError(
          f"Could not restore the checkpoint at {path}: {type(e).__name__}: {e}\n"
          "It was written by a different config (model, method, optimiser; compare the "
          "workdir's config.json), or it is damaged: then move it out of "
          f"{self.directory} to resume from the previous checkpoint."
      ) from e
    meta = dict(restored["meta"])
    saved = meta.pop("fingerprints", None)  # absent in checkpoints of earlier versions
    items = [("state", restored["state"])]
    if sample_target is not None:
      items.append(("sample", restored["sample"]))
    for name, tree in items:
      if saved is not None and name in saved:
        if fingerprint(tree) != saved[name][jax.process_index()]:
          raise CheckpointError(
              f"The checkpoint at {path} is damaged: its {name} arrays do not match the "
              f"fingerprint saved with them. Move it out of {self.directory} to resume from "
              "the previous checkpoint, or use a new --workdir.")
    if sample_target is not None:
      return restored["state"], meta, restored["sample"]
    return restored["state"], meta

  def set_aside(self, step: int, destination: str) -> str:
    """Moves checkpoint `step` out of the directory, to `<destination>/<step>` (a damaged one:
    kept for inspection, out of Orbax's way); returns where it went."""
    os.makedirs(destination, exist_ok=True)
    target = os.path.join(destination, str(step))
    if os.path.exists(target):
      shutil.rmtree(target)
    shutil.move(os.path.join(self.directory, str(step)), target)
    self._manager.reload()
    return target

  def latest_meta(self) -> dict[str, Any] | None:
    """The JSON metadata of the latest checkpoint (None when there is none), without reading
    its arrays."""
    step = self.latest_step()
    if step is None:
      return None
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def wait(self) -> None:
    """Blocks until every started save is complete on disk (CheckpointError on a full disk)."""
    self._guard(self._manager.wait_until_finished, "A checkpoint")

  def close(self, raise_errors: bool = True) -> None:
    """Waits for the saves under way, then closes. With `raise_errors=False` (closing while
    another error is being raised) a failed save is not raised again."""
    try:
      self.wait()
    except Exception:  # the caller's error, if any, is the one to report
      if raise_errors:
        raise
    finally:
      try:
        # Orbax removes stale temporary directories in a background thread started by the
        # manager, and its close() does not wait for it: a process that exits right after (the
        # evaluate command finding no checkpoint) then printed that thread's "cannot schedule new
        # futures after shutdown" traceback. Wait for it (a private method of the pinned Orbax;
        # skipped if a later version drops it).
        await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
        if await_cleanup is not None:
          await_cleanup()
      finally:
        self._manager.close()
