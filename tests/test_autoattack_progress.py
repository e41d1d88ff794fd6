"""What run_autoattack shows while it runs (attacks/autoattack_progress.py): bars that move only
with results and end exactly at their total, compile notices once per shape, the points each
attack attacks, and an estimate of the time left whose arithmetic is checked by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regmix_jax import attacks
from regmix_jax.attacks import autoattack_runner
from regmix_jax.attacks.autoattack import attack_specs
from regmix_jax.attacks.autoattack_progress import Progress, format_duration, pass_cost

OVERRIDES = {"apgd-ce": dict(num_steps=5), "apgd-t": dict(num_steps=5, num_target_classes=3),
             "fab-t": dict(num_steps=5, num_target_classes=3), "square": dict(num_queries=40)}


class Recorder(Progress):
  """Progress that records its events and checks, at every bar move, that the bar is not ahead
  of the results that arrived."""
  runs: list["Recorder"] = []

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.events = []
    self.lines = []
    say = self.say
    self.say = lambda s: (self.lines.append(s), say(s))
    Recorder.runs.append(self)

  def begin(self, spec, n_points):
    self.events.append(("begin", spec.name, n_points))
    self.arrived = self.advanced = 0
    self.kind = spec.kind
    self.cost = pass_cost(spec)
    self.skipped = 0
    super().begin(spec, n_points)
    self.total = self.bar.total

  def result(self, work):
    if self.kind != "square":
      self.arrived += round(work / self.cost)  # real points whose pass result is on the host
    super().result(work)

  def advance(self, units):
    self.advanced += units
    if self.kind != "square":
      assert self.advanced <= self.arrived, "the bar moved ahead of the results"
    super().advance(units)

  def skip(self, bar_units, work):
    self.skipped += bar_units
    super().skip(bar_units, work)

  def end(self):
    self.events.append(("end", self.name, self.advanced, self.total - self.skipped,
                        self.bar.n, self.bar.total))
    super().end()


def _model():
  w = jax.random.normal(jax.random.key(0), (5 * 5 * 3, 10)) * 0.3
  logits_fn = lambda z: z.reshape(z.shape[0], -1) @ w
  x = np.asarray(jax.random.uniform(jax.random.key(1), (40, 5, 5, 3)))
  labels = np.array(jnp.argmax(logits_fn(x), -1))
  labels[:6] = (labels[:6] + 1) % 10  # 6 points misclassified clean
  return logits_fn, x, labels


def test_bars_follow_results_and_lines_name_points_and_time_left(monkeypatch, capsys):
  Recorder.runs = []
  monkeypatch.setattr(autoattack_runner, "Progress", Recorder)
  logits_fn, x, labels = _model()
  result = attacks.run_autoattack(logits_fn, x, labels, jax.random.key(5), epsilon=0.05,
                                  batch_size=16, overrides=OVERRIDES)
  (run,) = Recorder.runs
  begins = [e for e in run.events if e[0] == "begin"]
  # Each attack attacks the points still robust after the one before it.
  robust_before = [round(result.accuracy[k] * len(x)) for k in ["clean", *result.attacks][:-1]]
  assert [e[2] for e in begins] == robust_before[:len(begins)]
  assert len(begins) >= 2 and begins[0][2] == 34
  for _, name, advanced, expected, n, total in (e for e in run.events if e[0] == "end"):
    assert advanced == expected == n == total, name  # ends at exactly 100%, never beyond
  out = capsys.readouterr().err + capsys.readouterr().out
  assert "apgd-ce: attacking the 34 points still robust (1 pass)" in "\n".join(run.lines)
  assert "apgd-t: attacking the " in "\n".join(run.lines)
  # An estimate after the first pass of each kind of attack (APGD, FAB, Square), and at the
  # start of an attack whose kind has run (APGD-T after APGD-CE).
  estimates = [i for i, line in enumerate(run.lines) if line.startswith("estimate: about ")]
  starts = [i for i, line in enumerate(run.lines) if ": attacking the " in line]
  names = [run.lines[i].split(":")[0] for i in starts]
  assert names == [e[1] for e in begins]
  after = lambda i: names[max(j for j, s in enumerate(starts) if s < i)]
  assert [after(i) for i in estimates] == ["apgd-ce", "apgd-t", "fab-t", "square"][:len(begins)]
  assert [estimates[1] - 1] == [starts[1]]  # APGD-T's start, its kind known
  assert "fab-t, square not run yet" in run.lines[estimates[0]]
  # Each shape compiled is announced once per attack and function (16-point batches here).
  assert ("apgd-ce", "pass", 16) in run.seen
  assert run.compile_seconds > 0
  del out


def test_the_estimate_is_the_work_left_at_each_kinds_measured_rate():
  specs = attack_specs("Linf", "standard", 10, epsilon=8 / 255, overrides=OVERRIDES)
  now = [100.0]
  lines = []
  shown = Progress(specs, lines.append, enabled=False, clock=lambda: now[0])
  apgd_ce, apgd_t, fab_t, square = specs
  shown.begin(apgd_ce, 20)
  assert shown.seconds_left() is None and len(lines) == 1  # no rate yet: no estimate
  start = shown.group()
  with shown.dispatch("pass", 16):
    now[0] += 7.0  # compiling: not in the rate
  with shown.dispatch("pass", 16):
    pass  # the same shape: no compile
  now[0] += 0.5  # the batches compute concurrently: the first result comes late,
  shown.result(16 * 5)
  assert len(lines) == 1  # (no estimate before the pass is whole)
  now[0] += 2.5
  shown.result(4 * 5)  # the second at once after it: only the pass's total time means anything
  shown.measured(start, 20 * 5)  # 100 passes in 3 s of the 10 (7 compiling)
  # Left: nothing of APGD-CE, then 20 points through APGD-T (3 targets x 5 steps), FAB-T (3 x 5)
  # and Square (40 queries / 3), all at APGD's rate.
  want = (20 * 15 + 20 * 15 + 20 * 40 / 3) * 3.0 / 100
  assert shown.seconds_left() == pytest.approx(want)
  assert lines[-1].startswith(f"estimate: about {format_duration(want)} left")
  assert lines[-1].endswith("(7 s so far); fab-t, square not run yet: timed at the rate so far, "
                            "their own may differ")
  shown.end()
  # 12 of the 20 points fooled: the later attacks meet 8. APGD-T's kind has run: an estimate.
  shown.begin(apgd_t, 8)
  assert shown.seconds_left() == pytest.approx((8 * 15 + 8 * 15 + 8 * 40 / 3) * 3.0 / 100)
  assert lines[-1].startswith("estimate: about")
  shown.skip(0, 8 * 15)  # all 8 fooled before any pass ran
  assert shown.seconds_left() == pytest.approx((8 * 15 + 8 * 40 / 3) * 3.0 / 100)
  shown.end()
  # FAB-T: no estimate at its start (its kind has not run); after its first pass, its own rate.
  shown.begin(fab_t, 8)
  assert not lines[-1].startswith("estimate")
  start = shown.group()
  with shown.dispatch("pass", 8):
    now[0] += 3.0
  now[0] += 8.0
  shown.result(8 * 5)
  shown.measured(start, 8 * 5)  # 40 passes in 8 s: 2.7 times APGD's cost per pass
  assert lines[-1].startswith("estimate: about")
  assert shown.rate("fab") == pytest.approx(8.0 / 40)
  # FAB-T's 80 passes left at its rate; Square's at the rate of all so far, 11 s / 140.
  assert shown.seconds_left() == pytest.approx(80 * 0.2 + 8 * 40 / 3 * (11.0 / 140))


def test_a_finished_state_says_nothing_is_left_to_run(tmp_path, capsys):
  """A rerun of a finished evaluation printed "using standard version including ." (no names)."""
  logits_fn, x, labels = _model()
  kwargs = dict(epsilon=0.05, batch_size=16, overrides=OVERRIDES,
                state_path=str(tmp_path / "aa_state.json"))
  first = attacks.run_autoattack(logits_fn, x, labels, jax.random.key(5), **kwargs)
  capsys.readouterr()
  again = attacks.run_autoattack(logits_fn, x, labels, jax.random.key(5), **kwargs)
  out = capsys.readouterr()
  text = out.out + out.err
  assert "including ." not in text and "using standard version" not in text
  assert "apgd-ce, apgd-t, fab-t, square was/were already run: nothing left to run." in text
  assert again.robust_accuracy == first.robust_accuracy


def test_format_duration():
  assert [format_duration(s) for s in (42, 450, 2.3 * 3600)] == ["42 s", "7.5 min", "2.3 h"]
