"""Run outputs: per-epoch records in `metrics.jsonl`, TensorBoard scalars and the final table.

`metrics.jsonl` is only ever appended to. Training is deterministic given the config, so an epoch
re-run after a resume produces the record it produced before: a record for an epoch already in
the file is not written twice, and a line cut short by a kill is dropped on the next start. A
damaged complete line is no kill's doing: it stops the run with a ValueError naming the line.

Epochs are counted from 1, as the progress bar and every printed line count them: the record of
the first epoch has `"epoch": 1` and `"step"` = steps per epoch. Files written before 2026-12-07
counted from 0 (`step == (epoch + 1) * steps_per_epoch`); given `steps_per_epoch`, such a file is
renumbered when opened (rewritten atomically: a kill leaves the old or the new file whole).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

from regmix_jax.workdir import write_atomic

# tensorboardX imports torch where it is installed (a large share of every command's start, and
# its memory; docs/performance.md), only to accept torch tensors; we log floats. Unless torch is
# already loaded, it is hidden from that one import.
if "torch" in sys.modules:
  from tensorboardX import SummaryWriter
else:
  sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX catches
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]


class MetricsLog:
  """Append-only JSON-lines log of per-epoch records (`{"epoch": e, "step": s, ...}`, e from 1).
  `steps_per_epoch` (the run's) renumbers a file that counted epochs from 0."""

  def __init__(self, path: str, steps_per_epoch: int = 0):
    self.path = path
    self.epochs: set[int] = set()
    self.records: list[dict[str, Any]] = []
    if os.path.exists(path):
      with open(path, "rb") as f:
        content = f.read()
      complete, _, partial = content.rpartition(b"\n")
      if partial:  # a record cut short by a kill: remove it, it will be written again
        with open(path, "r+b") as f:
          f.truncate(len(complete) + 1 if complete else 0)
      for number, line in enumerate(complete.split(b"\n"), 1):
        if line.strip():
          record = self._parse(line, number)
          self.records.append(record)
      if steps_per_epoch > 0 and any(_counted_from_zero(r, steps_per_epoch) for r in self.records):
        self.records = [dict(r, epoch=r["epoch"] + 1) if _counted_from_zero(r, steps_per_epoch)
                        else r for r in self.records]
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in self.records))
      self.epochs.update(r["epoch"] for r in self.records)

  def _parse(self, line: bytes, number: int) -> dict[str, Any]:
    """One complete line's record; ValueError naming the file, the line and the fix."""
    try:
      record = json.loads(line)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
      problem = f"is not JSON ({e})"
    else:
      if isinstance(record, dict) and isinstance(record.get("epoch"), int):
        return record
      problem = "is not a record with an integer `epoch`"
    raise ValueError(
        f"{self.path} line {number} {problem}: the file is damaged. Move it aside (e.g. "
        f"`mv {self.path} {self.path}.damaged`) and start the run again: its checkpoints are "
        "unaffected, and it resumes with a new metrics.jsonl (the earlier epochs' records stay "
        "in the moved file).")

  def append(self, record: Mapping[str, Any]) -> bool:
    """Appends `record` unless its epoch is already logged; returns whether it was written."""
    if record["epoch"] in self.epochs:
      return False
    with open(self.path, "a") as f:
      f.write(json.dumps(dict(record)) + "\n")
      f.flush()
      os.fsync(f.fileno())
    self.epochs.add(record["epoch"])
    self.records.append(dict(record))
    return True


def _counted_from_zero(record: Mapping[str, Any], steps_per_epoch: int) -> bool:
  """A record written when epochs were counted from 0 (before 2026-12-07)."""
  return record.get("step") == (record["epoch"] + 1) * steps_per_epoch


class TensorBoard:
  """Scalars for TensorBoard through tensorboardX (no TensorFlow needed); a no-op when disabled."""

  def __init__(self, logdir: str | None):
    self._writer = None
    if logdir:
      self._writer = SummaryWriter(logdir)

  def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
    if self._writer is not None:
      for k, v in values.items():
        self._writer.add_scalar(prefix + k, float(v), step)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.flush()
      self._writer.close()


def summary_table(records: list[Mapping[str, Any]], width: int = 100) -> str:
  """A fixed-width table of the per-epoch records (accuracies in percent), in blocks of columns
  no wider than `width` characters (each block repeats the epoch), so that it does not wrap."""
  if not records:
    return "(no epochs recorded)"
  columns = [k for k in records[-1] if k not in ("epoch", "step", "time")]
  def fmt(key, value):
    if value is None:
      return "-"
    if key.endswith("accuracy") or key.startswith("eval_"):
      return f"{100 * value:.2f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
  def column(key):
    cells = [fmt(key, r.get(key)) for r in records]
    return key, max(len(key), *(len(c) for c in cells)), cells
  epoch, blocks = column("epoch"), [[]]
  for col in map(column, columns):
    used = epoch[1] + sum(2 + w for _, w, _ in blocks[-1])
    if blocks[-1] and used + 2 + col[1] > width:
      blocks.append([])
    blocks[-1].append(col)
  def render(block):
    block = [epoch, *block]
    line = lambda cells: "  ".join(c.rjust(w) for c, (_, w, _) in zip(cells, block))
    return "\n".join([line([k for k, _, _ in block]), line(["-" * w for _, w, _ in block])] +
                     [line([cells[i] for _, _, cells in block]) for i in range(len(records))])
  return "\n\n".join(render(b) for b in blocks)
