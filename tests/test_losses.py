"""Losses of the baselines against hand-computed values on fixed logits."""

import jax
import jax.numpy as jnp
import numpy as np

from regmix_jax import losses

LOG = np.log


def test_kl_div_direction_by_hand():
  p = jnp.array([[0.0, 0.0]])  # P = (0.5, 0.5)
  q = jnp.log(jnp.array([[0.9, 0.1]]))  # Q = (0.9, 0.1)
  # KL(P || Q) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.510826; KL(Q || P) = 0.368064.
  np.testing.assert_allclose(losses.kl_div(p, q), [0.510826], atol=1e-5)
  np.testing.assert_allclose(losses.kl_div(q, p), [0.368064], atol=1e-5)


def test_kl_div_extreme_logits_are_finite_with_finite_gradients():
  p = jnp.array([[1e4, 0.0, -1e4]])
  q = jnp.array([[-1e4, 0.0, 1e4]])
  value, grads = jax.value_and_grad(lambda a, b: losses.kl_div(a, b).sum(), argnums=(0, 1))(p, q)
  np.testing.assert_allclose(value, 2e4, rtol=1e-5)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  np.testing.assert_allclose(losses.kl_div(p, p), [0.0], atol=1e-6)


def test_smooth_labels_fgsm_pgk_convention():
  out = losses.smooth_labels(jnp.array([1]), 5, 0.5)
  np.testing.assert_allclose(out, [[0.125, 0.5, 0.125, 0.125, 0.125]])


def test_logit_mse_is_the_element_mean():
  a = jnp.array([[1.0, 2.0], [0.0, 0.0]])
  b = jnp.array([[0.0, 0.0], [3.0, 1.0]])
  np.testing.assert_allclose(losses.logit_mse(a, b), [2.5, 5.0])


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


CLEAN = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
ADV = np.array([[0.5, 1.5, -0.5], [1.0, -1.0, 2.0]])
LABELS = np.array([0, 1])


def test_trades_loss_by_hand():
  pc, pa = _softmax(CLEAN), _softmax(ADV)
  ce = -LOG(pc[[0, 1], LABELS])
  kl = (pc * (LOG(pc) - LOG(pa))).sum(-1)
  np.testing.assert_allclose(losses.trades_loss(CLEAN, ADV, LABELS, beta=6.0), ce + 6.0 * kl,
                             rtol=1e-5)
  # The KL's reference is the clean distribution: swapping the arguments changes the value.
  assert not np.allclose(losses.trades_loss(CLEAN, ADV, LABELS, beta=6.0),
                         ce + 6.0 * (pa * (LOG(pa) - LOG(pc))).sum(-1), rtol=1e-3)


def test_mart_loss_by_hand():
  pc, pa = _softmax(CLEAN), _softmax(ADV)
  # Most likely wrong class under P(f(x')): row 0 (true 0) -> class 1; row 1 (true 1) -> class 2.
  p_wrong = np.array([pa[0, 1], pa[1, 2]])
  bce = -LOG(pa[[0, 1], LABELS]) - LOG(1.0001 - p_wrong)
  kl = (pc * (LOG(pc) - LOG(pa))).sum(-1)
  expected = bce + 6.0 * kl * (1.0000001 - pc[[0, 1], LABELS])
  np.testing.assert_allclose(losses.mart_loss(CLEAN, ADV, LABELS, beta=6.0), expected, rtol=1e-5)
