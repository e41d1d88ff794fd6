"""RegMix's losses (AMR, AGR, the whole objective) against hand-computed values and identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regmix_jax import losses

LN2, LN15 = np.log(2.0), np.log(1.5)
# P(init) = [1/2, 1/4, 1/4], P(final) = [1/8, 3/8, 1/2], P(clean) = [0.8, 0.1, 0.1] as logits.
INIT = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
FINAL = jnp.log(jnp.array([[0.125, 0.375, 0.5]]))
CLEAN = jnp.log(jnp.array([[0.8, 0.1, 0.1]]))
LABELS = jnp.array([0])
# KL(P(init) || P(final)) = 1/2 ln 4 + 1/4 ln(2/3) + 1/4 ln(1/2) = 3/4 ln 2 - 1/4 ln 1.5
KL_IF = 0.75 * LN2 - 0.25 * LN15
# KL(P(final) || P(init)) = 1/8 ln(1/4) + 3/8 ln 1.5 + 1/2 ln 2 = 1/4 ln 2 + 3/8 ln 1.5
KL_FI = 0.25 * LN2 + 0.375 * LN15


def test_amr_loss_hand_values_and_direction():
  assert abs(KL_IF - KL_FI) > 0.05  # the two directions differ on these logits
  np.testing.assert_allclose(losses.kl_div(INIT, FINAL), [KL_IF], rtol=1e-6)
  np.testing.assert_allclose(losses.amr_loss(INIT, FINAL, alpha=1.0, beta=0.5),
                             [KL_IF + 0.5 * KL_FI], rtol=1e-6)
  # Swapping the arguments swaps which direction gets alpha: a different value.
  np.testing.assert_allclose(losses.amr_loss(FINAL, INIT, alpha=1.0, beta=0.5),
                             [KL_FI + 0.5 * KL_IF], rtol=1e-6)


def test_amr_identities():
  z = jax.random.normal(jax.random.key(0), (5, 10)) * 3
  w = jax.random.normal(jax.random.key(1), (5, 10)) * 3
  np.testing.assert_allclose(losses.amr_loss(z, z, alpha=1.0, beta=0.5), np.zeros(5), atol=1e-6)
  # alpha = beta: symmetric in its two arguments.
  np.testing.assert_allclose(losses.amr_loss(z, w, alpha=0.7, beta=0.7),
                             losses.amr_loss(w, z, alpha=0.7, beta=0.7), rtol=1e-5)


def test_agr_targets_hand_values_and_identity():
  smoothed = losses.smooth_labels(LABELS, 3, 0.5)  # [0.5, 0.25, 0.25]
  t = losses.agr_targets(smoothed, CLEAN, gamma=0.25)
  np.testing.assert_allclose(t, [[0.575, 0.2125, 0.2125]], rtol=1e-6)
  # CE(final, t) = (1 - g) CE(final, y~) + g [KL(P(clean) || P(final)) + H(P(clean))].
  p_c = np.array([0.8, 0.1, 0.1])
  entropy = -(p_c * np.log(p_c)).sum()
  want = (0.75 * losses.cross_entropy(FINAL, smoothed)
          + 0.25 * (losses.kl_div(CLEAN, FINAL) + entropy))
  np.testing.assert_allclose(losses.cross_entropy(FINAL, t), want, rtol=1e-6)


def test_regmix_loss_hand_value():
  loss, terms = losses.regmix_loss(CLEAN, INIT, FINAL, LABELS, label_smoothing=0.5,
                                   regularizer="amr", target="agr", alpha=1.0, beta=0.5,
                                   gamma=0.25)
  ce = -(0.575 * np.log(0.125) + 0.2125 * np.log(0.375) + 0.2125 * np.log(0.5))
  np.testing.assert_allclose(terms["target_ce"], [ce], rtol=1e-6)
  np.testing.assert_allclose(terms["regularizer"], [KL_IF + 0.5 * KL_FI], rtol=1e-6)
  np.testing.assert_allclose(loss, [ce + KL_IF + 0.5 * KL_FI], rtol=1e-6)


def test_gamma_zero_is_fgsm_amr_and_mse_smoothed_is_fgsm_pgk():
  z = jax.random.normal(jax.random.key(2), (3, 8, 10))
  labels = jnp.array([1, 4, 9, 0, 2, 3, 5, 7])
  kw = dict(label_smoothing=0.5, alpha=1.3, beta=0.6)
  agr0, _ = losses.regmix_loss(z[0], z[1], z[2], labels, target="agr", gamma=0.0, **kw)
  amr, _ = losses.regmix_loss(None, z[1], z[2], labels, target="smoothed", **kw)
  np.testing.assert_allclose(agr0, amr, rtol=1e-6)
  pgk, _ = losses.regmix_loss(None, z[1], z[2], labels, regularizer="mse", target="smoothed",
                              lam=5.6, label_smoothing=0.5)
  y_s = losses.smooth_labels(labels, 10, 0.5)
  np.testing.assert_allclose(pgk, losses.cross_entropy(z[2], y_s)
                             + 5.6 * losses.logit_mse(z[2], z[1]), rtol=1e-6)


@pytest.mark.parametrize("stop", [False, True])
def test_gradient_flows_into_the_three_branches(stop):
  z = jax.random.normal(jax.random.key(3), (3, 4, 6))
  labels = jnp.array([0, 1, 2, 3])
  f = lambda c, i, a: losses.regmix_loss(c, i, a, labels, gamma=0.3,
                                         stop_gradient_clean=stop)[0].sum()
  grads = jax.grad(f, argnums=(0, 1, 2))(z[0], z[1], z[2])
  assert np.abs(np.asarray(grads[1])).max() > 1e-4  # initial branch (AMR)
  assert np.abs(np.asarray(grads[2])).max() > 1e-4  # final branch
  if stop:
    assert not np.asarray(grads[0]).any()  # clean branch detached
  else:
    assert np.abs(np.asarray(grads[0])).max() > 1e-4


def test_finite_for_extreme_logits_under_jit_vmap_and_grad():
  big = jnp.array([[1e4, -1e4, 0.0], [0.0, 0.0, 1e4]])
  other = jnp.array([[-1e4, 1e4, 0.0], [1e4, 0.0, 0.0]])
  labels = jnp.array([0, 2])
  f = jax.jit(lambda c, i, a: losses.regmix_loss(c, i, a, labels, gamma=0.5)[0].sum())
  value, grads = jax.value_and_grad(f, argnums=(0, 1, 2))(big, other, big)
  assert np.isfinite(float(value))
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()
  per_example = jax.vmap(lambda c, i, a, y: losses.regmix_loss(
      c[None], i[None], a[None], y[None], gamma=0.5)[0][0])(big, other, big, labels)
  np.testing.assert_allclose(per_example, losses.regmix_loss(big, other, big, labels,
                                                             gamma=0.5)[0], rtol=1e-6)
  assert np.isfinite(np.asarray(per_example)).all()
