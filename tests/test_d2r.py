"""D2R + CAG: the loss against hand-computed values, gradients into both models, CAG's ascent."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from regmix_jax import attacks, config as config_lib, losses, methods, models, rng
from regmix_jax import train_state as ts
from regmix_jax.train_step import bind_method, train_step

LN2, LN15, LN3 = np.log(2.0), np.log(1.5), np.log(3.0)
# Two examples, three classes, given as probabilities (logits = their logs).
P_G = np.array([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]])  # guide on x
P_T = np.array([[0.125, 0.375, 0.5], [0.2, 0.6, 0.2]])  # target on x
P_A = np.array([[0.125, 0.375, 0.5], [0.6, 0.2, 0.2]])  # target on x'
LABELS = jnp.array([0, 1])
# Example 1: KL(P_T || P_G) = 1/4 ln 2 + 3/8 ln 1.5; KL(P_G || P_T) = 3/4 ln 2 - 1/4 ln 1.5.
KL_TG, KL_GT = 0.25 * LN2 + 0.375 * LN15, 0.75 * LN2 - 0.25 * LN15
CE = np.array([LN2, -np.log(0.6)])  # guide's label loss
MSE = np.array([((2 * LN2) ** 2 + LN15 ** 2 + LN2 ** 2) / 3, 2 * LN3 ** 2 / 3])
ADV_KL = np.array([KL_TG, 0.4 * LN3])  # KL(P(t(x')) || P(g(x))); example 1's reverse differs


def _loss(clean_term):
  return losses.d2r_loss(jnp.log(P_G), jnp.log(P_T), jnp.log(P_A), LABELS, clean_term=clean_term)


def test_d2r_abs_diff_hand_values():
  loss, terms = _loss("abs_diff")
  # Released code: |mean_b KL(P_T || P_G) - mean_b KL(P_G || P_T)|; example 2 has P_T = P_G.
  diff = KL_TG - KL_GT  # < 0
  np.testing.assert_allclose(terms["clean"], [-diff, 0.0], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(terms["clean"].mean(), abs(diff) / 2, rtol=1e-5)
  np.testing.assert_allclose(terms["guide_ce"], CE, rtol=1e-6)
  np.testing.assert_allclose(terms["mse"], MSE, rtol=1e-5)
  np.testing.assert_allclose(terms["adv_kl"], ADV_KL, rtol=1e-5)
  # Weights 20 / C and 30 / C for C = 3.
  want = CE + MSE + 20 / 3 * np.array([-diff, 0.0]) + 10.0 * ADV_KL
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  # Would fail with the adversarial KL's direction swapped: KL(P_G || P_A) for example 1.
  assert abs(ADV_KL[0] - KL_GT) > 0.05


def test_d2r_sum_hand_values():
  loss, terms = _loss("sum")
  np.testing.assert_allclose(terms["clean"], [KL_TG + KL_GT, 0.0], atol=1e-6)
  np.testing.assert_allclose(loss, CE + MSE + 20 / 3 * np.array([KL_TG + KL_GT, 0.0])
                             + 10.0 * ADV_KL, rtol=1e-5)


def test_abs_diff_gradient_is_that_of_the_batch_level_absolute_value():
  z = jax.random.normal(jax.random.key(0), (3, 6, 5)) * 2
  labels = jnp.arange(6) % 5
  per_example = lambda g, t: losses.d2r_loss(g, t, z[2], labels)[1]["clean"].mean()
  released = lambda g, t: jnp.abs(losses.kl_div(t, g).mean() - losses.kl_div(g, t).mean())
  np.testing.assert_allclose(per_example(z[0], z[1]), released(z[0], z[1]), rtol=1e-5)
  for a, b in zip(jax.grad(per_example, (0, 1))(z[0], z[1]),
                  jax.grad(released, (0, 1))(z[0], z[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def _two_models(**optim):
  config = config_lib.base_config()
  config.method = methods.method_config("d2r", num_steps=3)
  config.optim.schedule = "constant"
  config.optim.update(optim)
  nets = {"target": models.get_model("small_cnn", 10, width=8),
          "guide": models.get_model("small_cnn", 10, width=4)}
  state = ts.create_train_state(config, nets, (16, 16, 3), steps_per_epoch=1)
  return config, nets, state


def test_one_step_moves_both_models_by_their_gradients():
  # Plain SGD without weight decay or momentum: a parameter moves iff its gradient is non-zero.
  config, nets, state = _two_models(weight_decay=0.0, momentum=0.0)
  r = np.random.default_rng(0)
  batch = {"image": r.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
           "label": r.integers(0, 10, 16).astype(np.int32),
           "index": np.arange(16, dtype=np.int32), "mask": np.ones(16, bool)}
  method = bind_method(methods.get_method("d2r").loss, nets, config.method)
  new_state, metrics, _ = jax.jit(functools.partial(train_step, method=method))(state, batch)
  for role in ("target", "guide"):
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(new_state.params[role]), jax.tree.leaves(state.params[role]))]
    assert sum(m > 0 for m in moved) >= len(moved) - 2, (role, moved)  # (BN biases may not)
    assert max(moved) > 1e-4, role
  assert set(new_state.batch_stats) == {"target", "guide"}
  assert np.isfinite(float(metrics["loss"])) and float(metrics["guide_accuracy"]) >= 0


def test_cag_ascends_its_objective_inside_the_box():
  _, nets, state = _two_models()
  x = jax.random.uniform(jax.random.key(1), (32, 16, 16, 3))
  x = x.at[:4].set(jnp.round(x[:4]))  # pixels at 0 and 1
  target = lambda z: nets["target"].apply({"params": state.params["target"],
                                           "batch_stats": state.batch_stats["target"]}, z,
                                          train=False)
  guide_clean = nets["guide"].apply({"params": state.params["guide"],
                                     "batch_stats": state.batch_stats["guide"]}, x,
                                    train=False)
  keys = rng.example_keys(jax.random.key(2), jnp.arange(32))
  objective = lambda z: float(losses.kl_div(guide_clean, target(z)).sum())  # KL(P(g(x)) || P(t))
  start = attacks.cag(target, guide_clean, x, keys, num_steps=0)
  x_adv = jax.jit(attacks.cag, static_argnums=0)(target, guide_clean, x, keys)
  # Untrained models (PyTorch's initialisation: outputs barely depend on the input) give a small
  # rise; it must beat the same radius spent at random.
  random_corner = jnp.clip(x + 0.031 * jnp.sign(jax.random.normal(jax.random.key(4), x.shape)),
                           0.0, 1.0)
  assert objective(x_adv) > objective(random_corner) > 0.0
  assert objective(x_adv) > objective(start)
  assert np.abs(np.asarray(x_adv - x)).max() <= 0.031 + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  assert 0 < np.abs(np.asarray(start - x)).max() < 0.01  # Gaussian start, std 0.001


def test_checkpoint_restores_both_models(tmp_path):
  from regmix_jax import checkpointing  # pylint: disable=g-import-not-at-top
  _, _, state = _two_models()
  bumped = state.replace(params=jax.tree.map(lambda p: p + 1.0, state.params))
  ckpt = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(1, bumped, {"epoch": 0})
  restored, _ = ckpt.restore(state)
  ckpt.close()
  for role in ("target", "guide"):
    for a, b in zip(jax.tree.leaves(restored.params[role]), jax.tree.leaves(bumped.params[role])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
