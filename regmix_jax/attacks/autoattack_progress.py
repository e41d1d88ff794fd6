"""What `run_autoattack` shows while it runs (`progress=True`), so a long evaluation is never a
blank screen:

- a bar per attack, in points x passes (Square: queries), that moves only when a batch's result
  exists on the host, and shrinks when points are fooled (their remaining passes are skipped);
- "compiling for B points" in the bar while a new batch shape compiles (the first call of a
  jitted function with that shape runs the compiler before it dispatches);
- at each attack's start, how many points it attacks;
- an estimate of the time left after the first pass (all batches of it) of each kind of attack
  (APGD, FAB, Square: their costs per pass differ, e.g. FAB's L2 and L1 projections), and at the
  start of each attack whose kind has run: every point still robust through every remaining
  pass (each fooled point shortens it), at each kind's measured rate; kinds not yet run are
  timed at the rate so far, and named (their own may differ).

A pass's time is the wall time from its first dispatch to its last result less the compiling
within it: batches may compute concurrently (XLA:CPU runs them on its thread pool), so the time
between two results says nothing alone.
Work is counted in forward-backward passes per point (`pass_cost`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Sequence

import tqdm

from regmix_jax import progress as progress_lib
from regmix_jax.attacks.autoattack import AttackSpec


def pass_cost(spec: AttackSpec) -> float:
  """One point through one pass of `spec`, in forward-backward passes: APGD and FAB take a
  gradient per step (APGD's EOT: `eot_iter` of them); Square's queries are forward passes, about
  a third of a forward-backward each."""
  s = spec.settings
  if spec.kind == "square":
    return s["num_queries"] / 3
  return s["num_steps"] * s.get("eot_iter", 1)


def format_duration(seconds: float) -> str:
  """`42 s`, `7.5 min`, `2.3 h`."""
  if seconds < 90:
    return f"{seconds:.0f} s"
  if seconds < 90 * 60:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h"


class Progress:
  """The bars, compile notices and estimates of one `run_autoattack` call (module docstring).

  `say` prints a line (tqdm-safe); with `enabled=False` nothing is shown. Per pass:
  `start = group()`, the dispatches (each in `dispatch`), `result` per batch, then
  `measured(start, work)`."""

  def __init__(self, specs: Sequence[AttackSpec], say: Callable[[str], None], enabled: bool,
               clock: Callable[[], float] = time.monotonic):
    self.specs = tuple(specs)
    self.say = say
    self.enabled = enabled
    self.clock = clock
    self.compile_seconds = 0.0
    self.busy: dict[str, float] = {}  # kind -> seconds of its passes, compiling left out
    self.work_done: dict[str, float] = {}  # kind -> their forward-backward passes (real points)
    self.work_left_now = 0.0  # of the attack running
    self.later: list[tuple[AttackSpec, int]] = []
    self.seen: set = set()
    self.bar = None
    self.name = ""
    self.kind = ""

  # --- one attack ---
  def begin(self, spec: AttackSpec, n_points: int) -> None:
    """Starts `spec` on the `n_points` points still robust (the attacks after it meet at most
    as many)."""
    self.name, self.kind = spec.name, spec.kind
    position = self.specs.index(spec)
    self.later = [(s, n_points) for s in self.specs[position + 1:]]
    self.work_left_now = n_points * spec.num_passes * pass_cost(spec)
    if spec.kind == "square":
      total, unit = spec.num_passes * spec.settings["num_queries"], " queries"
    else:
      total, unit = spec.num_passes * n_points, " point-passes"
    self.say(f"{spec.name}: attacking the {n_points} points still robust "
             f"({spec.num_passes} pass{'es' if spec.num_passes > 1 else ''})")
    if spec.kind in self.work_done:
      self._estimate()
    self.bar = tqdm.tqdm(total=total, desc=spec.name, unit=unit, disable=not self.enabled,
                         leave=False)
    self._stop_ticking = progress_lib.tick(self.bar)  # its clock moves during long batches

  def end(self) -> None:
    if self.bar is not None:
      self._stop_ticking()
      self.bar.close()
    self.bar = None

  @contextlib.contextmanager
  def dispatch(self, fn_name: str, size: int):
    """Around a jitted call on a batch of `size` points: the first call with this shape
    compiles, which the bar says while it happens."""
    key = (self.name, fn_name, size)
    if key in self.seen:
      yield
      return
    self.seen.add(key)
    if self.bar is not None:
      self.bar.set_description(f"{self.name} (compiling for {size} points)")
    t0 = self.clock()
    try:
      yield
    finally:
      self.compile_seconds += self.clock() - t0
      if self.bar is not None:
        self.bar.set_description(self.name)

  def group(self) -> tuple[float, float]:
    """Marks the start of a pass (before its first dispatch)."""
    return self.clock(), self.compile_seconds

  def result(self, work: float) -> None:
    """A batch's result is on the host: `work` forward-backward passes of real points."""
    self.work_left_now = max(self.work_left_now - work, 0.0)

  def measured(self, start: tuple[float, float], work: float) -> None:
    """The pass begun at `start` (`group()`) has all its results: `work` forward-backward passes
    in its wall time less the compiling within it. The first of each kind prints an estimate."""
    began, compiled = start
    seconds = self.clock() - began - (self.compile_seconds - compiled)
    if work <= 0 or seconds <= 0:
      return
    first = self.kind not in self.work_done
    self.busy[self.kind] = self.busy.get(self.kind, 0.0) + seconds
    self.work_done[self.kind] = self.work_done.get(self.kind, 0.0) + work
    if first:
      self._estimate()

  def advance(self, units: int) -> None:
    """Moves the bar by `units` (after their results arrived)."""
    if self.bar is not None:
      self.bar.update(units)

  def skip(self, bar_units: int, work: float) -> None:
    """Work that will not run: points fooled before their remaining passes or queries."""
    self.work_left_now = max(self.work_left_now - work, 0.0)
    if self.bar is not None and bar_units:
      self.bar.total = max(self.bar.total - int(bar_units), self.bar.n)
      self.bar.refresh()

  def left(self, count: int) -> None:
    """The points the running attack has not fooled yet, beside its bar."""
    if self.bar is not None:
      self.bar.set_postfix(left=count, refresh=False)

  # --- the estimate ---
  def rate(self, kind: str) -> float | None:
    """Seconds per forward-backward pass of `kind`'s attacks, or of all measured so far when
    `kind` has not run (None before any pass was measured)."""
    if self.work_done.get(kind):
      return self.busy[kind] / self.work_done[kind]
    work = sum(self.work_done.values())
    return sum(self.busy.values()) / work if work else None

  def seconds_left(self) -> float | None:
    """The time the remaining work takes at the rates so far (None before any measure)."""
    if self.rate(self.kind) is None:
      return None
    return self.work_left_now * self.rate(self.kind) + sum(
        n * s.num_passes * pass_cost(s) * self.rate(s.kind) for s, n in self.later)

  def _estimate(self) -> None:
    left = self.seconds_left()
    if left is None:
      return
    guessed = [s.name for s, n in self.later if n and s.kind not in self.work_done]
    self.say(f"estimate: about {format_duration(left)} left if no more points are fooled "
             f"(each one fooled shortens it), plus compiling "
             f"({format_duration(self.compile_seconds)} so far)"
             + (f"; {', '.join(guessed)} not run yet: timed at the rate so far, their own may "
                "differ" if guessed else ""))
