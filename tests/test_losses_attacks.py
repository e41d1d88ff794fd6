"""Losses against hand-computed values; attack invariants on a tiny linear model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regmix_jax import attacks, losses, rng


def test_cross_entropy_matches_hand_values():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
  log_z0 = np.log(np.exp(2.0) + 1.0 + np.exp(-1.0))
  np.testing.assert_allclose(losses.cross_entropy(logits, jnp.array([0, 2])),
                             [log_z0 - 2.0, np.log(3.0)], rtol=1e-6)
  soft = jnp.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
  np.testing.assert_allclose(losses.cross_entropy(logits, soft),
                             [0.5 * (log_z0 - 2.0) + 0.5 * log_z0, np.log(3.0)], rtol=1e-6)


def test_cross_entropy_finite_for_extreme_logits():
  logits = jnp.array([[1e4, -1e4, 0.0]])
  value, grad = jax.value_and_grad(lambda z: losses.cross_entropy(z, jnp.array([1])).sum())(logits)
  np.testing.assert_allclose(value, 2e4, rtol=1e-6)
  assert np.isfinite(np.asarray(grad)).all()


def test_margin_and_correct():
  logits = jnp.array([[3.0, 1.0, 2.5], [0.0, 4.0, -1.0]])
  labels = jnp.array([0, 2])
  np.testing.assert_allclose(losses.margin(logits, labels), [2.5 - 3.0, 4.0 - (-1.0)])
  np.testing.assert_array_equal(losses.correct(logits, labels), [1.0, 0.0])


def _linear_problem(seed=0, batch=16):
  """A fixed random linear classifier on 8x8x3 images and a batch of images in [0, 1]."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  w = jax.random.normal(k1, (8 * 8 * 3, 4))
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
  x = jax.random.uniform(k2, (batch, 8, 8, 3))
  x = x.at[:2].set(jnp.where(x[:2] > 0.5, 1.0, 0.0))  # pixels at the box edges
  labels = jax.random.randint(k3, (batch,), 0, 4)
  return logits_fn, x, labels


ATTACKS = {
    "fgsm": functools.partial(attacks.fgsm, epsilon=8 / 255, random_start=False),
    "fgsm_rs": functools.partial(attacks.fgsm, epsilon=8 / 255, step_size=10 / 255),
    "pgd": functools.partial(attacks.pgd, epsilon=8 / 255, step_size=2 / 255, num_steps=5),
    "pgd_stop": functools.partial(attacks.pgd, epsilon=8 / 255, step_size=2 / 255, num_steps=5,
                                  early_stop=True),
    "cw": functools.partial(attacks.cw_linf, epsilon=8 / 255, step_size=2 / 255, num_steps=5),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_stay_in_eps_ball_and_box(name):
  logits_fn, x, labels = _linear_problem()
  keys = rng.example_keys(jax.random.key(1), jnp.arange(x.shape[0]))
  x_adv = jax.jit(ATTACKS[name], static_argnums=0)(logits_fn, x, labels, keys)
  assert np.abs(np.asarray(x_adv - x)).max() <= 8 / 255 + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  assert np.abs(np.asarray(x_adv - x)).max() > 1 / 255  # it moved
  # No gradient path back to the input.
  g = jax.grad(lambda x: ATTACKS[name](logits_fn, x, labels, keys).sum())(x)
  assert not np.asarray(g).any()


def test_pgd_increases_loss_over_fgsm_and_clean():
  logits_fn, x, labels = _linear_problem(batch=64)
  keys = rng.example_keys(jax.random.key(2), jnp.arange(64))
  ce = lambda z: float(losses.cross_entropy(logits_fn(z), labels).mean())
  x_pgd = attacks.pgd(logits_fn, x, labels, keys, epsilon=8 / 255, step_size=2 / 255,
                      num_steps=10)
  assert ce(x) < ce(ATTACKS["fgsm"](logits_fn, x, labels, keys)) <= ce(x_pgd) + 1e-4


def test_early_stop_leaves_misclassified_samples_at_their_start():
  logits_fn, x, labels = _linear_problem(batch=32)
  wrong = jnp.argmax(logits_fn(x), -1) != labels
  assert 0 < int(wrong.sum()) < 32
  x_adv = attacks.pgd(logits_fn, x, labels, None, epsilon=8 / 255, step_size=2 / 255,
                      num_steps=5, random_start=False, early_stop=True)
  moved = np.abs(np.asarray(x_adv - x)).reshape(32, -1).max(-1) > 0
  assert not moved[np.asarray(wrong)].any()
  assert moved[~np.asarray(wrong)].all()


def test_early_stop_freezes_a_sample_where_it_first_becomes_misclassified():
  logits_fn, x, labels = _linear_problem(batch=64)
  run = lambda steps: attacks.pgd(logits_fn, x, labels, None, epsilon=0.3,
                                  step_size=0.03, num_steps=steps, random_start=False,
                                  early_stop=True)
  x1 = run(1)
  correct_at_start = np.asarray(jnp.argmax(logits_fn(x), -1) == labels)
  crossed = correct_at_start & np.asarray(jnp.argmax(logits_fn(x1), -1) != labels)
  assert crossed.any()  # some samples become misclassified after the first step
  x4 = run(4)
  np.testing.assert_array_equal(np.asarray(x4)[crossed], np.asarray(x1)[crossed])
  still = np.asarray(jnp.argmax(logits_fn(x1), -1) == labels)
  assert (np.abs(np.asarray(x4 - x1)).reshape(64, -1).max(-1)[still] > 0).all()


def test_per_example_keys_make_random_start_independent_of_batch_split():
  logits_fn, x, labels = _linear_problem(batch=8)
  index = jnp.arange(100, 108)
  keys = rng.example_keys(jax.random.key(3), index)
  attack = functools.partial(attacks.pgd, logits_fn, epsilon=8 / 255, step_size=2 / 255,
                             num_steps=2)
  whole = attack(x, labels, keys)
  halves = jnp.concatenate([attack(x[:4], labels[:4], keys[:4]),
                            attack(x[4:], labels[4:], keys[4:])])
  np.testing.assert_allclose(whole, halves, atol=1e-7)


def test_n_fgsm_perturbation_exceeds_eps_but_not_noise_plus_step():
  logits_fn, x, labels = _linear_problem(batch=64)
  keys = rng.example_keys(jax.random.key(4), jnp.arange(64))
  eps = 8 / 255
  x_adv = attacks.fgsm(logits_fn, x, labels, keys, epsilon=eps, init_radius=2 * eps,
                       project_radius=float("inf"))
  delta = np.abs(np.asarray(x_adv - x))
  assert delta.max() > eps + 1e-3  # no projection to the eps-ball
  assert delta.max() <= 3 * eps + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_kl_attack_increases_kl_from_a_gaussian_start():
  logits_fn, x, labels = _linear_problem(batch=32)
  keys = rng.example_keys(jax.random.key(5), jnp.arange(32))
  reference = logits_fn(x)
  start = attacks.pgd(logits_fn, x, reference, keys, epsilon=0.031, step_size=0.007,
                      num_steps=0, loss="kl", init_std=0.001)
  assert 0 < np.abs(np.asarray(start - x)).max() < 0.01  # Gaussian start, std 0.001
  x_adv = attacks.pgd(logits_fn, x, reference, keys, epsilon=0.031, step_size=0.007,
                      num_steps=10, loss="kl", init_std=0.001)
  kl = lambda z: float(losses.kl_div(reference, logits_fn(z)).mean())
  assert kl(x_adv) > 10 * kl(start)
  assert np.abs(np.asarray(x_adv - x)).max() <= 0.031 + 1e-6
