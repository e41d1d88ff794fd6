"""APGD and the AutoAttack composition: DLR values by hand, the official checkpoint schedule,
invariants, and a gradient-masked model that PGD calls robust and AutoAttack does not."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regmix_jax import attacks, losses, rng

apgd_lib = importlib.import_module("regmix_jax.attacks.apgd")  # the package re-exports `apgd`


def test_dlr_losses_match_hand_values():
  logits = jnp.array([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 1.0, 4.0]])
  labels = jnp.array([0, 1])
  # Row 0 correct: -(3 - 1) / (3 - 0.5). Row 1 wrong (top is class 3): -(2 - 4) / (4 - 1).
  np.testing.assert_allclose(losses.dlr(logits, labels), [-2.0 / 2.5, 2.0 / 3.0], rtol=1e-6)
  # Targeted, t = class 2 in row 0 and class 0 in row 1:
  # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).
  targets = jnp.array([2, 0])
  np.testing.assert_allclose(losses.dlr_targeted(logits, labels, targets),
                             [-(3.0 - 0.5) / (3.0 - (0.5 - 1.0) / 2), -(2.0 - 0.0) / (4.0 - 0.5)],
                             rtol=1e-6)
  # Shift and scale invariance of both.
  np.testing.assert_allclose(losses.dlr(5.0 * logits + 7.0, labels), losses.dlr(logits, labels),
                             rtol=1e-5)


def test_apgd_checkpoints_follow_the_official_schedule():
  assert [it for it, _ in apgd_lib.checkpoints(100)] == [22, 41, 57, 70, 80, 87, 93, 99]
  assert [k for _, k in apgd_lib.checkpoints(100)] == [22, 19, 16, 13, 10, 7, 6, 6]


def _linear(seed=0, classes=10, shape=(6, 6, 3)):
  w = jax.random.normal(jax.random.key(seed), (int(np.prod(shape)), classes)) * 0.3
  x = jax.random.uniform(jax.random.key(seed + 1), (32, *shape))
  x = x.at[:4].set(jnp.round(x[:4]))  # pixels on the box faces
  logits_fn = lambda z: z.reshape(z.shape[0], -1) @ w
  return logits_fn, x


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-dlr", "apgd-t"])
def test_apgd_stays_in_the_ball_and_box_and_leaves_misclassified_points(name):
  logits_fn, x = _linear()
  pred = jnp.argmax(logits_fn(x), -1)
  labels = pred.at[:8].set((pred[:8] + 1) % 10)  # 8 points misclassified from the start
  eps = 0.03
  attack = jax.jit(lambda x, y, k: attacks.AUTOATTACK_ATTACKS[name](
      logits_fn, x, y, k, epsilon=eps, num_steps=10))
  adv = attack(x, labels, jax.random.key(3))
  assert float(jnp.max(jnp.abs(adv - x))) <= eps + 1e-6
  assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
  np.testing.assert_array_equal(adv[:8], x[:8])
  fooled = jnp.argmax(logits_fn(adv), -1) != labels
  assert bool(fooled[8:].any())  # eps 0.03 on this model fools some
  # A point not fooled comes back clean.
  unchanged = jnp.all((adv == x).reshape(32, -1), axis=1)
  assert bool(jnp.all(unchanged | fooled))


def test_autoattack_catches_a_gradient_masked_model():
  # Logits of quantised inputs: the gradient is zero almost everywhere, so PGD (and APGD, FAB)
  # cannot move; Square only queries the model.
  w = jax.random.normal(jax.random.key(0), (4 * 4 * 3, 10))
  logits_fn = lambda z: (jnp.round(z * 4) / 4).reshape(z.shape[0], -1) @ w
  x = jax.random.uniform(jax.random.key(1), (64, 4, 4, 3))
  labels = jnp.argmax(logits_fn(x), -1)
  eps = 0.1
  pgd = attacks.pgd(logits_fn, x, labels, jax.random.key(2), epsilon=eps, step_size=eps / 4,
                    num_steps=20)
  pgd_acc = float(jnp.mean(jnp.argmax(logits_fn(pgd), -1) == labels))
  adv, robust = jax.jit(lambda x, y, k: attacks.autoattack(
      logits_fn, x, y, k, epsilon=eps, version=["apgd-ce", "apgd-t", "square"]))(
          x, labels, jax.random.key(3))
  assert pgd_acc > 0.8, pgd_acc  # PGD (its random start aside) cannot move
  assert float(robust.mean()) < pgd_acc - 0.5, float(robust.mean())  # the composition can
  np.testing.assert_array_equal(np.asarray(robust),
                                np.asarray(jnp.argmax(logits_fn(adv), -1) == labels))
  assert float(jnp.max(jnp.abs(adv - x))) <= eps + 1e-6
  assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def test_autoattack_is_the_pointwise_worst_case():
  logits_fn, x = _linear(seed=4)
  labels = jnp.argmax(logits_fn(x), -1)
  eps, key = 0.02, jax.random.key(5)
  names = ("apgd-ce", "apgd-t")
  _, robust = attacks.autoattack(logits_fn, x, labels, key, epsilon=eps, version=names)
  # Each attack alone, with the keys the composition gives it: example b, attack i.
  keys = rng.example_keys(key, jnp.arange(x.shape[0]))
  alone = [jnp.argmax(logits_fn(attacks.AUTOATTACK_ATTACKS[n](
      logits_fn, x, labels, rng.fold(keys, i), epsilon=eps)), -1) == labels
           for i, n in enumerate(names)]
  np.testing.assert_array_equal(np.asarray(robust), np.asarray(alone[0] & alone[1]))
  with pytest.raises(ValueError, match="version"):
    attacks.autoattack(logits_fn, x, labels, key, epsilon=eps, version="strong")
