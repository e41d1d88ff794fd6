"""`run_autoattack(state_path=...)`: a run killed (SIGKILL, a real subprocess) right after its
second attack resumes from the state file, skips the attacks done, and ends with the flags and
points of an uninterrupted run; a state made for another evaluation is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from regmix_jax import attacks

import tiny_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The evaluation, shared by the child process and the test (the same JAX settings as conftest,
# so that both compute the same numbers).
SETUP = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    w = jax.random.normal(jax.random.key(0), (5 * 5 * 3, 10)) * 0.3
    logits_fn = lambda z: z.reshape(z.shape[0], -1) @ w
    x = np.asarray(jax.random.uniform(jax.random.key(1), (40, 5, 5, 3)))
    labels = np.asarray(jnp.argmax(logits_fn(x), -1))
    kwargs = dict(epsilon=0.02, batch_size=16, progress=False, overrides={
        "apgd-ce": dict(num_steps=5), "apgd-t": dict(num_steps=5, num_target_classes=3),
        "fab-t": dict(num_steps=5, num_target_classes=3), "square": dict(num_queries=40)})
""")

CHILD = textwrap.dedent("""
    import os, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    jax.config.update("jax_disable_most_optimizations", True)
    from regmix_jax import attacks
    state_path = sys.argv[1]
""") + tiny_runs.kill_after_attacks_source("state_path") + textwrap.dedent("""
""") + SETUP + textwrap.dedent("""
    attacks.run_autoattack(logits_fn, x, labels, jax.random.key(5), state_path=state_path,
                           **kwargs)
    print("finished without being killed")
""")


def _setup():
  scope = {}
  exec(SETUP, scope)  # pylint: disable=exec-used
  return scope


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
  state_path = str(tmp_path / "aa_state.json")
  child = subprocess.run([sys.executable, "-c", CHILD, state_path], cwd=ROOT,
                         capture_output=True, text=True, timeout=600,
                         env=tiny_runs.killable_env({**os.environ, "PYTHONPATH": ROOT}))
  assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
  with open(state_path) as f:
    saved = json.load(f)
  assert saved["run_attacks"] == ["apgd-ce", "apgd-t"]
  assert os.path.exists(state_path + ".x_adv.npz")

  s = _setup()
  resumed = attacks.run_autoattack(s["logits_fn"], s["x"], s["labels"], jax.random.key(5),
                                   state_path=state_path, **s["kwargs"])
  # The first two attacks were not run again: their times are the saved ones.
  assert resumed.seconds["apgd-ce"] == saved["seconds"]["apgd-ce"]
  assert resumed.seconds["apgd-t"] == saved["seconds"]["apgd-t"]
  whole = attacks.run_autoattack(s["logits_fn"], s["x"], s["labels"], jax.random.key(5),
                                 **s["kwargs"])
  assert 0 < whole.robust.sum() < whole.accuracy["clean"] * len(s["x"])
  np.testing.assert_array_equal(resumed.robust, whole.robust)
  np.testing.assert_array_equal(resumed.x_adv, whole.x_adv)
  np.testing.assert_array_equal(resumed.y_adv, whole.y_adv)
  assert resumed.accuracy == whole.accuracy
  with open(state_path) as f:
    assert json.load(f)["run_attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]

  _refuses_a_state_made_for_another_evaluation(s, state_path, whole)


def _refuses_a_state_made_for_another_evaluation(s, state_path, whole):
  """The finished state of `whole` given to a call that differs in one thing the result
  depends on: refused, naming that field (resuming would return `whole`'s flags and points). What
  the result does not depend on (batch_size) resumes."""
  aa = attacks.run_autoattack
  x, labels, key, kwargs = s["x"], s["labels"], jax.random.key(5), s["kwargs"]
  w = s["w"]
  other_model = lambda z: z.reshape(z.shape[0], -1) @ (w * 1.5)  # same predictions, other logits
  assert (np.argmax(other_model(x), -1) == labels).all()
  other_overrides = {**kwargs["overrides"], "square": dict(num_queries=41)}
  cases = {
      "images": (s["logits_fn"], np.clip(x[::-1] * 0.5 + 0.25, 0, 1), labels, key, {}),
      "labels": (s["logits_fn"], x, (labels + 1) % 10, key, {}),
      "probe": (other_model, x, labels, key, {}),
      "model_id": (s["logits_fn"], x, labels, key, {"model_id": "weights-b"}),
      "key": (s["logits_fn"], x, labels, jax.random.key(6), {}),
      "epsilon": (s["logits_fn"], x, labels, key, {"epsilon": 0.03}),
      "norm": (s["logits_fn"], x, labels, key, {"norm": "L2", "epsilon": 0.5}),
      "attacks_to_run": (s["logits_fn"], x, labels, key, {"version": ["apgd-ce"]}),
      "overrides": (s["logits_fn"], x, labels, key, {"overrides": other_overrides}),
  }
  for field, (fn, xs, ys, k, changes) in cases.items():
    with pytest.raises(attacks.StateMismatchError,
                       match=rf"was made for another evaluation: its [a-z_, ]*{field}.*another "
                             "state_path, or delete the file"):
      aa(fn, xs, ys, k, state_path=state_path, **{**kwargs, **changes})
  again = aa(s["logits_fn"], x, labels, key, state_path=state_path,
             **{**kwargs, "batch_size": 8})
  np.testing.assert_array_equal(again.x_adv, whole.x_adv)
  with open(state_path, "w") as f:
    f.write("{damaged")
  with pytest.raises(attacks.StateMismatchError, match="cannot be read.*Delete it"):
    aa(s["logits_fn"], x, labels, key, state_path=state_path, **kwargs)


class _Stop(Exception):
  """Stands for a kill right after a save within an attack."""


def _interrupted_at(monkeypatch, n):
  """Makes the n-th save within an attack (a state naming a partial attack) stop the run."""
  real, seen = attacks.autoattack_runner._save_state, []

  def save_then_stop(path, state, x_adv, x):
    real(path, state, x_adv, x)
    if state.get("partial"):
      seen.append(state["partial"])
      if len(seen) == n:
        raise _Stop

  monkeypatch.setattr(attacks.autoattack_runner, "_save_state", save_then_stop)
  return seen


@pytest.mark.parametrize("version,n,attack", [
    ("standard", 1, "apgd-t"), (["apgd-t"], 1, "apgd-t"), (["fab-t"], 1, "fab-t"),
    (["square"], 2, "square")])
@pytest.mark.parametrize("damaged", [False, True])
def test_a_run_stopped_within_an_attack_resumes_at_its_pass_or_segment(
    tmp_path, monkeypatch, capsys, version, n, attack, damaged):
  """Saves within an attack (after each pass of APGD-T's and FAB-T's 3 targets, each segment of
  Square's 600 queries: 50, 200, 500), at a radius where each of them fools points in its early
  passes or segments: a run stopped right after one resumes there and ends with the
  uninterrupted flags and points. A partial file whose tag the state does not name (a kill
  between the two writes) is ignored: the attack starts over, to the same result."""
  s = _setup()
  kwargs = dict(s["kwargs"], partial_every_s=0.0, epsilon=0.03, version=version)
  kwargs["overrides"] = dict(kwargs["overrides"], square=dict(num_queries=600))
  state_path = str(tmp_path / "aa_state.json")
  seen = _interrupted_at(monkeypatch, n)
  with pytest.raises(_Stop):
    attacks.run_autoattack(s["logits_fn"], s["x"], s["labels"], jax.random.key(5),
                           state_path=state_path, **kwargs)
  monkeypatch.undo()
  assert seen[-1]["attack"] == attack
  with open(state_path) as f:
    assert json.load(f)["partial"]["tag"] == seen[-1]["tag"]
  if damaged:
    with np.load(state_path + ".partial.npz") as saved:
      arrays = {k: saved[k] for k in saved.files}
    np.savez(state_path + ".partial.npz", **dict(arrays, tag=np.array("another:1:1:0")))
  resumed = attacks.run_autoattack(s["logits_fn"], s["x"], s["labels"], jax.random.key(5),
                                   state_path=state_path, **dict(kwargs, progress=True))
  said = capsys.readouterr().out
  step = seen[-1]["step"]
  assert (f"{attack}: resuming at its saved" in said) != damaged, said[-2000:]
  if not damaged:
    assert f"{'segment' if attack == 'square' else 'pass'} {step}" in said
  whole = attacks.run_autoattack(s["logits_fn"], s["x"], s["labels"], jax.random.key(5),
                                 **{k: v for k, v in kwargs.items() if k != "partial_every_s"})
  assert 0 < whole.robust.sum()
  np.testing.assert_array_equal(resumed.robust, whole.robust)
  np.testing.assert_array_equal(resumed.x_adv, whole.x_adv)
  assert not os.path.exists(state_path + ".partial.npz")  # removed once its attack finished
