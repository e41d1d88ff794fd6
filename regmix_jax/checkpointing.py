"""Checkpoints with Orbax's `CheckpointManager`: the TrainState plus JSON metadata.

The metadata holds the data position (epoch, step within the epoch) and the running sums of the
epoch's training metrics (so a resumed epoch reports exactly what an uninterrupted one would). A
method's per-example state (FGSM-PGK's buffers) is a third item, `sample`: global arrays sharded
over the devices, so that each process saves and restores only its own examples' rows. Orbax writes
each checkpoint to a temporary directory and renames it when complete, so a kill during a save
leaves the previous checkpoint intact; unfinished temporary directories are removed on the next
start.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored."""


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
    `sample`: the per-example state as global arrays (`SampleState.to_global`), if any."""
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if sample is not None:
      items["sample"] = ocp.args.StandardSave(sample)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

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
    try:
      items = {"state": ocp.args.StandardRestore(target_state), "meta": ocp.args.JsonRestore()}
      if sample_target is not None:
        items["sample"] = ocp.args.StandardRestore(sample_target)
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Orbax raises many types for unreadable or mismatched trees.
      raise CheckpointError(
          f"Could not restore the checkpoint at {path}: {type(e).__name__}: {e}\n"
          "It is corrupted or was written by a different config (model, method, optimiser). "
          f"Delete {path} to resume from the previous checkpoint, or use a new --workdir."
      ) from e
    if sample_target is not None:
      return restored["state"], dict(restored["meta"]), restored["sample"]
    return restored["state"], dict(restored["meta"])

  def wait(self) -> None:
    """Blocks until every started save is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
