"""Square Attack (L-inf): the official p schedule, the square proposal, invariants, and that it
fools a model whose gradients are zero."""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np

from regmix_jax import attacks, rng
from regmix_jax.attacks.square import p_selection, square, square_side

# The module (the package re-exports the function `square` under the same name).
square_lib = importlib.import_module("regmix_jax.attacks.square")


def test_p_schedule_matches_official_values():
  # AutoAttack: n_queries=5000, resc_schedule=False (the iteration is used as is).
  expected = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 200: 0.2, 201: 0.1, 500: 0.1, 501: 0.05,
              1000: 0.05, 1001: 0.025, 2000: 0.025, 2001: 0.0125, 4000: 0.0125, 4001: 0.00625,
              4999: 0.00625}
  for it, p in expected.items():
    assert p_selection(0.8, it, 5000) == p, it
  # Rescaled to 10000 queries: it -> int(it / 5000 * 10000) = 2 it.
  expected = {0: 0.8, 5: 0.8, 6: 0.4, 25: 0.4, 26: 0.2, 100: 0.2, 101: 0.1, 250: 0.1, 251: 0.05,
              500: 0.05, 501: 0.025, 1000: 0.025, 1001: 0.0125, 2000: 0.0125, 2001: 0.00625,
              3000: 0.00625, 3001: 0.003125, 4000: 0.003125, 4001: 0.0015625, 4999: 0.0015625}
  for it, p in expected.items():
    assert p_selection(0.8, it, 5000, rescale_schedule=True) == p, it
  # 100 queries rescaled: it -> 100 it.
  expected = {0: 0.8, 1: 0.2, 2: 0.2, 3: 0.1, 5: 0.1, 6: 0.05, 10: 0.05, 11: 0.025}
  for it, p in expected.items():
    assert p_selection(0.8, it, 100, rescale_schedule=True) == p, it
  # Side max(round(sqrt(p * H * W)), 1), at most H - 1: CIFAR 32x32 and 8x8.
  assert [square_side(0.8 / 2**k, 32, 32) for k in range(10)] == [29, 20, 14, 10, 7, 5, 4, 3, 2, 1]
  assert [square_side(0.8 / 2**k, 8, 8) for k in range(7)] == [7, 5, 4, 3, 2, 1, 1]
  assert square_side(1.0, 8, 8) == 7


def test_stripes_are_constant_along_the_height():
  x = jnp.full((8, 8, 3), 0.5)
  start = square_lib._stripes(jax.random.key(0), x, 0.1)
  np.testing.assert_allclose(np.abs(np.asarray(start - x)), 0.1, rtol=1e-5)
  np.testing.assert_array_equal(start, jnp.broadcast_to(start[:1], start.shape))
  assert len(np.unique(np.asarray(start))) == 2  # both signs occur


def test_proposal_is_a_square_and_resamples_signs_that_change_nothing():
  sign_vectors = jnp.array([[a, b, c] for a in (-1.0, 1.0) for b in (-1.0, 1.0)
                            for c in (-1.0, 1.0)])
  x = jnp.zeros((8, 8, 3))
  keys = jax.random.split(jax.random.key(0), 256)
  propose = jax.jit(jax.vmap(square_lib._propose, in_axes=(0, None, None, None, None, None)))
  # x_best = clip(x - eps) = x: the all-minus sign vector changes nothing and is never chosen.
  new = np.asarray(propose(keys, x, x, jnp.int32(3), 0.5, sign_vectors))
  changed = new != 0
  assert changed.reshape(256, -1).any(-1).all()
  rows, cols = changed.any(axis=(2, 3)), changed.any(axis=(1, 3))  # [256, 8]
  assert (rows.sum(-1) == 3).all() and (cols.sum(-1) == 3).all()
  assert not rows[:, -1].any() and not cols[:, -1].any()  # as official: never the last row/col
  assert rows[:, 0].any() and rows[:, 4].any()  # positions 0 .. H - s - 1 all occur
  window = changed.any(-1)
  assert ((new == 0.5) | (new == 0.0)).all()
  assert (changed == (window[..., None] & (new == 0.5))).all()  # one sign per channel
  # eps = 0: no sign vector changes anything (the official loop would not end): x_best back.
  new = propose(keys, x, x, jnp.int32(3), 0.0, sign_vectors)
  assert not np.asarray(new).any()


def _linear_problem(batch=16):
  k1, k2 = jax.random.split(jax.random.key(0))
  w = jax.random.normal(k1, (8 * 8 * 3, 4))
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
  x = jax.random.uniform(k2, (batch, 8, 8, 3))
  x = x.at[:4].set(jnp.where(x[:4] > 0.5, 1.0, 0.0))  # pixels at the box edges
  return logits_fn, x, jnp.argmax(logits_fn(x), -1)


def test_eps_ball_box_and_ball_vertices():
  logits_fn, x, labels = _linear_problem()
  eps = 0.1
  x_adv = np.asarray(square(logits_fn, x, labels, jax.random.key(1), epsilon=eps, num_queries=10,
                            num_restarts=2, loss="ce"))
  x = np.asarray(x)
  assert np.abs(x_adv - x).max() <= eps + 1e-6
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  fooled = np.asarray(jnp.argmax(logits_fn(jnp.asarray(x_adv)), -1) != labels)
  assert 0 < fooled.sum() < len(fooled)
  # Fooled examples sit on the ball's vertices (every pixel at clip(x +- eps)); others are x.
  up, down = np.clip(x + eps, 0, 1), np.clip(x - eps, 0, 1)
  assert (np.isclose(x_adv, up, atol=1e-6) | np.isclose(x_adv, down, atol=1e-6))[fooled].all()
  np.testing.assert_array_equal(x_adv[~fooled], x[~fooled])


@functools.lru_cache(maxsize=None)
def _step_problem():
  """A linear model on images quantised to steps of 1/4: its gradient is zero everywhere."""
  k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
  w = jax.random.normal(k1, (8 * 8 * 3, 4))
  logits_fn = lambda x: (jnp.round(x * 4) / 4).reshape(x.shape[0], -1) @ w
  x = jax.random.uniform(k2, (16, 8, 8, 3))
  labels = jnp.argmax(logits_fn(x), -1)
  labels = labels.at[12:].set((labels[12:] + 1) % 4)  # the last four start misclassified
  keys = rng.example_keys(jax.random.key(3), jnp.arange(100, 116))
  # Few queries: the schedule rescaled to them (AutoAttack's 5000 queries use it as is).
  attack = jax.jit(functools.partial(square, logits_fn, epsilon=0.1, num_queries=100,
                                     rescale_schedule=True))
  return logits_fn, x, labels, keys, attack, attack(x, labels, keys)


def test_square_fools_a_model_with_zero_gradients():
  logits_fn, x, labels, keys, _, x_adv = _step_problem()
  assert not jax.grad(lambda z: logits_fn(z).sum())(x).any()
  accuracy = lambda z: float(jnp.mean(jnp.argmax(logits_fn(z[:12]), -1) == labels[:12]))
  assert accuracy(x) == 1.0
  x_pgd = attacks.pgd(logits_fn, x, labels, keys, epsilon=0.1, step_size=0.025, num_steps=10,
                      random_start=False)
  assert accuracy(x_pgd) == 1.0  # blind: sign(0) = 0
  assert accuracy(x_adv) <= 0.25
  assert np.abs(np.asarray(x_adv - x)).max() <= 0.1 + 1e-6


def test_already_misclassified_examples_are_unchanged():
  _, x, _, _, _, x_adv = _step_problem()
  np.testing.assert_array_equal(x_adv[12:], x[12:])


def test_per_example_keys_make_results_independent_of_batch_split():
  _, x, labels, keys, attack, whole = _step_problem()
  halves = jnp.concatenate([attack(x[:8], labels[:8], keys[:8]),
                            attack(x[8:], labels[8:], keys[8:])])
  np.testing.assert_array_equal(whole, halves)
