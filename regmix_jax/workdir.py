"""A run's workdir: one writer at a time, and a fresh run that starts from a clean slate.

`exclusive(workdir, what)` holds an OS file lock (`fcntl.flock` on `<workdir>/.lock`) while a
training run or a convert writes there: the kernel drops it when the holder exits, however it
exits (a SIGKILL leaves no stale lock). A second writer stops at once, naming the holder's pid,
host and command. The evaluate command takes no workdir lock (it only reads checkpoints); its
record appends lock the records file itself (`evaluate.append_eval_record`).

`set_aside_previous_run(workdir)`: a training run that starts with no checkpoint in a workdir that
holds another run's outputs (its checkpoints deleted) moves those outputs into
`<workdir>/previous_run.<time>/`, so its metrics, curves and records never mix with the old ones.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Iterator

from absl import logging

LOCK_FILE = ".lock"
# What a run leaves in its workdir besides checkpoints/ (moved aside together by
# `set_aside_previous_run`). `config.json` goes too when any of the others is there.
RUN_OUTPUTS = ("metrics.jsonl", "tensorboard", "final_eval.json", "eval_records.jsonl",
               "eval_state", "best", "checkpoints_damaged")


# The directories a run writes in its workdir (a file of one of these names blocks it).
WRITTEN_DIRS = ("checkpoints", "tensorboard", "best", "eval_state")


class WorkdirError(ValueError):
  """The workdir cannot be used: held by another writer, a file, or not writable."""


def check_writable(workdir: str, flag: str = "--workdir") -> None:
  """Raises WorkdirError naming the cause when `workdir` cannot be created or written: it is a
  file, it lies under a file, or its nearest existing directory is not writable."""
  if not workdir:
    raise WorkdirError(f"{flag} is empty: name the run's directory (e.g. {flag}=runs/my_run).")
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"{flag}={workdir} is a file, not a directory: pass a directory (a new "
                       "one for a new run).")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise WorkdirError(f"{flag}={workdir} lies under {existing}, which is a file: pass a path "
                       "under a directory.")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise WorkdirError(f"{flag}={workdir}: {existing} is not writable by this user: pass a "
                       "workdir you can write to.")
  for name in WRITTEN_DIRS:  # found here, not at the first save after an epoch of training
    inside = os.path.join(path, name)
    if os.path.exists(inside) and not os.path.isdir(inside):
      raise WorkdirError(f"{flag}={workdir}: {inside} is a file where the run keeps a directory: "
                         "move it aside, or pass another --workdir.")


def _holder(fd: int) -> str:
  """The lock holder's description, as it wrote it into the lock file."""
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (OSError, ValueError):
    info = {}
  if not info:
    return "another process"
  return (f"pid {info.get('pid')} on {info.get('host')} ({info.get('what')}, started "
          f"{info.get('started')}: {info.get('command')})")


@contextlib.contextmanager
def exclusive(workdir: str, what: str) -> Iterator[None]:
  """Holds `workdir`'s writer lock (creating the directory) for the block; raises WorkdirError
  at once when another process holds it. `what` names this writer in the lock file ("training",
  "convert") for the message the next one gets."""
  check_writable(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      raise WorkdirError(
          f"The workdir {workdir} is in use by {_holder(fd)}. Two writers in one workdir would "
          "overwrite each other's checkpoints and metrics: wait for that one to end (or stop "
          "it), or use another --workdir.") from None
    info = dict(pid=os.getpid(), host=socket.gethostname(), what=what,
                started=time.strftime("%Y-%m-%d %H:%M:%S"), command=" ".join(sys.argv)[:500])
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock (so does any exit of this process)


def write_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file renamed into place: a kill leaves the old
  file or the new one, never a truncated one."""
  partial = f"{path}.tmp"
  with open(partial, "w") as f:
    f.write(text)
  os.replace(partial, path)


def previous_run_outputs(workdir: str) -> list[str]:
  """The names of another run's outputs in `workdir` (`RUN_OUTPUTS` that exist, and then
  `config.json` and `config.to_step_*.json`); [] when there are none."""
  if not os.path.isdir(workdir):
    return []
  names = [n for n in RUN_OUTPUTS if os.path.exists(os.path.join(workdir, n))]
  if names:
    names += sorted(n for n in os.listdir(workdir)
                    if n == "config.json" or (n.startswith("config.to_step_")
                                              and n.endswith(".json")))
  return names


def set_aside_previous_run(workdir: str) -> str | None:
  """Moves another run's outputs (`previous_run_outputs`) into `<workdir>/previous_run.<time>/`
  with a warning, and returns that directory; None when there was nothing to move. Call it
  holding the lock, before a run with no checkpoint opens its writers."""
  names = previous_run_outputs(workdir)
  if not names:
    return None
  stamp = time.strftime("%Y%m%d-%H%M%S")
  aside = os.path.join(workdir, f"previous_run.{stamp}")
  suffix = 1
  while os.path.exists(aside):
    suffix += 1
    aside = os.path.join(workdir, f"previous_run.{stamp}.{suffix}")
  os.makedirs(aside)
  for name in names:
    os.replace(os.path.join(workdir, name), os.path.join(aside, name))
  message = (f"{workdir} has no checkpoint but holds another run's outputs "
             f"({', '.join(names)}): this run starts afresh, and those were moved to {aside} "
             "so that its metrics and records do not mix with theirs.")
  logging.warning(message)
  return aside
