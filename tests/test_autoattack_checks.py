"""AutoAttack's checks (`attacks/checks.py`): each fires, with the official wording, on a model
built to trigger it and stays silent on a normal one; and the "rand" version (EOT) beats
"standard" on a model with input noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regmix_jax import attacks
from regmix_jax.attacks import checks

SHAPE = (5, 5, 3)
# Few iterations: the checks do not depend on the attacks' strength.
SHORT = {"apgd-ce": dict(num_steps=4), "apgd-dlr": dict(num_steps=4),
         "apgd-t": dict(num_steps=4, num_target_classes=2), "fab": dict(num_steps=4),
         "fab-t": dict(num_steps=4, num_target_classes=2), "square": dict(num_queries=20)}


def _data(seed=0, n=16, classes=10):
  w = jax.random.normal(jax.random.key(seed), (int(np.prod(SHAPE)), classes)) * 0.3
  x = np.asarray(jax.random.uniform(jax.random.key(seed + 1), (n, *SHAPE)))
  logits_fn = lambda z: z.reshape(z.shape[0], -1) @ w
  return logits_fn, x, np.asarray(jnp.argmax(logits_fn(x), -1))


def _run(logits_fn, x, labels, **kwargs):
  kwargs = {"epsilon": 0.01, "overrides": SHORT, "progress": False, **kwargs}
  return attacks.run_autoattack(logits_fn, x, labels, jax.random.key(0), **kwargs)


def test_a_normal_model_raises_no_warning():
  logits_fn, x, labels = _data()
  assert _run(logits_fn, x, labels).warnings == ()


def test_randomized_model():
  logits_fn, x, labels = _data()
  noisy = lambda z, key: logits_fn(z + 0.05 * jax.random.normal(key, z.shape))
  result = _run(noisy, x, labels, randomized=True, version=["apgd-ce"])
  assert result.warnings == (
      'it seems to be a randomized defense! Please use version="rand". See flags_doc.md for '
      'details.',)
  assert _run(noisy, x, labels, randomized=True, version="rand").warnings == ()  # not checked


def test_probability_output():
  logits_fn, x, labels = _data()
  result = _run(lambda z: jax.nn.softmax(logits_fn(z)), x, labels, version=["apgd-ce"])
  assert result.warnings == (
      "it seems that the output is a probability distribution, please be sure that the logits "
      "are used! See flags_doc.md for details.",)


def test_zero_gradients():
  logits_fn, x, labels = _data()
  # Quantised inputs: the input gradient is zero everywhere.
  masked = lambda z: logits_fn(jnp.round(z * 4) / 4)
  labels = np.asarray(jnp.argmax(masked(x), -1))  # every point attacked
  result = _run(masked, x, labels, version=["apgd-dlr"])
  assert result.warnings == (
      f"there are {len(x)} points with zero gradient! This might lead to unreliable evaluation "
      "with gradient-based attacks. See flags_doc.md for details.",)
  assert _run(masked, x, labels, version=["apgd-ce"]).warnings == ()  # CE: not checked


def test_dynamic_defense():
  logits_fn, x, labels = _data()

  def purified(z):  # one step of gradient-based input purification inside the forward pass
    energy = lambda v: jnp.sum(jax.nn.logsumexp(logits_fn(v), axis=-1))
    return logits_fn(z + 0.001 * jax.grad(energy)(z))

  assert _run(purified, x, labels, version=["apgd-ce"]).warnings == (
      "it seems to be a dynamic defense! The evaluation with AutoAttack might be insufficient. "
      "See flags_doc.md for details.",)


def test_target_classes_against_classes():
  logits_fn, x, labels = _data(classes=4)
  result = _run(logits_fn, x, labels, version=["apgd-t", "fab-t"],
                overrides={"apgd-t": dict(num_steps=3), "fab-t": dict(num_steps=3)})
  assert result.warnings == (
      "it seems that more target classes (9) than possible (3) are used in APGD-T! Also, it "
      "seems that too many target classes (9) are used in FAB-T (3 possible)!",)
  # The official messages for the other cases, word for word (checks.py:117-140).
  assert checks.check_n_classes(2, ["apgd-dlr"], 9, 9) == (
      "with only 2 classes it is not possible to use the DLR loss!")
  assert checks.check_n_classes(3, ["apgd-t"], 9, 9) == (
      "with only 3 classes it is not possible to use the targeted DLR loss!")
  assert checks.check_n_classes(5, ["fab-t"], 9, 3) is None
  assert checks.check_n_classes(5, ["fab-t"], 7, 9) == (
      "it seems that more target classes (7) than possible (4) are used in FAB-T!")
  assert checks.check_n_classes(10, ["apgd-ce", "apgd-t", "fab-t", "square"], 9, 9) is None


def test_square_finds_points_the_gradient_attacks_missed():
  logits_fn, x, labels = _data(n=24)
  masked = lambda z: logits_fn(jnp.round(z * 4) / 4)  # no gradient: only Square moves
  result = _run(masked, x, labels, epsilon=0.15, version=["apgd-ce", "square"],
                overrides={"apgd-ce": dict(num_steps=3), "square": dict(num_queries=100)})
  drop = result.accuracy["apgd-ce"] - result.accuracy["square"]
  assert drop > 0.002
  assert result.warnings == (
      f"Square Attack has decreased the robust accuracy of {drop:.2%}. This might indicate "
      "that the robustness evaluation using AutoAttack is unreliable. Consider running Square "
      "Attack with more iterations and restarts or an adaptive attack. See flags_doc.md for "
      "details.",)
  assert checks.check_square_sr({"clean": 0.5, "apgd-ce": 0.3, "square": 0.299}) is None


def test_rand_beats_standard_on_a_model_with_input_noise():
  # Periodic features of the input plus uniform input noise of one period: each draw's input
  # gradient is dominated by the noise (amplitude `a` per pixel against |w| ~ 0.3), while the
  # logits barely move (a / freq per pixel). One draw (standard) gives a random direction; the
  # mean of 20 draws (rand's EOT) gives the linear part's.
  dims, classes, freq, a = int(np.prod(SHAPE)), 10, 400.0, 2.0
  w = jax.random.normal(jax.random.key(0), (dims, classes)) * 0.3
  v = jax.random.normal(jax.random.key(1), (dims, classes))

  def noisy(z, key):
    z = z.reshape(z.shape[0], -1)
    z_noisy = z + jax.random.uniform(key, z.shape) * (2 * np.pi / freq)
    return z @ w + (a / freq) * jnp.sin(freq * z_noisy) @ v

  x = np.asarray(jax.random.uniform(jax.random.key(2), (48, *SHAPE)))
  labels = np.asarray(jnp.argmax(x.reshape(48, -1) @ w, -1))
  common = dict(epsilon=0.03, randomized=True, batch_size=48, progress=False)
  rand = attacks.run_autoattack(noisy, x, labels, jax.random.key(3), version="rand",
                                overrides={"apgd-ce": dict(num_steps=20),
                                           "apgd-dlr": dict(num_steps=20)}, **common)
  standard = attacks.run_autoattack(
      noisy, x, labels, jax.random.key(3), version="standard",
      overrides={"apgd-ce": dict(num_steps=20), "apgd-t": dict(num_steps=20),
                 "fab-t": dict(num_steps=20), "square": dict(num_queries=20)}, **common)
  assert rand.robust_accuracy < standard.robust_accuracy - 0.1, (rand.accuracy,
                                                                 standard.accuracy)
  assert any("randomized" in w for w in standard.warnings)


@pytest.mark.parametrize("changes, message", [
    ({"epsilon": float("nan")}, "epsilon must be a finite positive radius"),
    ({"epsilon": float("inf")}, "epsilon must be a finite positive radius"),
    ({"epsilon": -0.03}, "epsilon must be a finite positive radius"),
    ({"epsilon": 0.0}, "epsilon must be a finite positive radius"),
    ({"epsilon": 8.0}, "exceeds the .0, 1. image range"),
    ({"x": "nan"}, "finite images; 1 values are NaN"),
    ({"labels": "fractional"}, "integer labels; got non-integer or NaN"),
    ({"labels": "nan"}, "integer labels; got non-integer or NaN"),
    ({"labels": "too large"}, r"labels in \[0, 10\).*got labels in \[0, 10\]"),
    ({"labels": "negative"}, r"labels in \[0, 10\)"),
])
def test_inputs_that_cannot_be_meant_are_refused_before_any_attack(changes, message):
  """Today's answers to these were a robust accuracy (2.5%, 100%, 0%...) for a radius, image or
  label nobody meant; each is now an error naming it."""
  logits_fn, x, labels = _data()
  x, labels = x.copy(), labels.astype(np.float64)
  kwargs = {}
  for name, change in changes.items():
    if name == "x":
      x[3, 1, 1, 0] = np.nan
    elif name == "labels":
      labels[2] = {"fractional": 1.5, "nan": np.nan, "too large": 10, "negative": -1}[change]
    else:
      kwargs[name] = change
  with pytest.raises(ValueError, match=message):
    _run(logits_fn, x, labels, **kwargs)


def test_integer_valued_float_labels_are_accepted():
  logits_fn, x, labels = _data()
  as_float = _run(logits_fn, x, labels.astype(np.float32))
  np.testing.assert_array_equal(as_float.robust, _run(logits_fn, x, labels).robust)


def test_weights_given_to_a_model_that_holds_its_own_are_refused_naming_both_forms():
  """`params=` with a `logits_fn(x)` (the weights closed over): an error that says how each form
  is called, not JAX's bare TypeError about positional arguments."""
  logits_fn, x, labels = _data()
  with pytest.raises(TypeError, match=r"calls logits_fn\(params, x\).*leave params out"):
    _run(logits_fn, x, labels, params={"w": np.zeros(3)})
  # The form it asks for runs.
  w = jax.random.normal(jax.random.key(0), (int(np.prod(SHAPE)), 10)) * 0.3  # _data's weights
  apply = lambda p, z: z.reshape(z.shape[0], -1) @ p
  given = _run(apply, x, labels, params=w)
  np.testing.assert_array_equal(given.robust, _run(logits_fn, x, labels).robust)
