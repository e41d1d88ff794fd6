"""Progress bars that keep time while the host waits for the device.

A bar redraws only when it moves, so one long batch (PGD-20 on a large model on a CPU) showed a
frozen line that looked hung. `tick(bar)` redraws the bar every second
from a daemon thread, so its elapsed time moves, until the returned `stop` is called; `ticking`
is the same as a context manager. Host-side display only: nothing here touches the computation.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import tqdm


def tick(bar: tqdm.tqdm, every: float = 1.0) -> Callable[[], None]:
  """Redraws `bar` every `every` seconds until the returned function is called (which waits for
  the thread to stop). A disabled bar gets no thread."""
  if bar.disable:
    return lambda: None
  stop = threading.Event()

  def run():
    while not stop.wait(every):
      bar.refresh()

  thread = threading.Thread(target=run, name="progress-tick", daemon=True)
  thread.start()

  def stop_ticking():
    stop.set()
    thread.join()
  return stop_ticking


@contextlib.contextmanager
def ticking(bar: tqdm.tqdm, every: float = 1.0) -> Iterator[tqdm.tqdm]:
  """`tick(bar)` for the duration of the block; closes nothing."""
  stop = tick(bar, every)
  try:
    yield bar
  finally:
    stop()
