"""Learning-rate schedules, the optimiser update and the EMA rule against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from regmix_jax import config as config_lib
from regmix_jax import train_state as ts


def _optim(**kw):
  c = config_lib.base_config().optim
  c.update(kw)
  return c


def test_multistep_schedule_per_iteration():
  fn = ts.learning_rate_schedule(_optim(schedule="multistep", milestones=(100, 105)),
                                 steps_per_epoch=10, num_epochs=110)
  rates = [float(fn(s)) for s in (0, 999, 1000, 1049, 1050, 1099)]
  np.testing.assert_allclose(rates, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_piecewise_schedule_d2r():
  # D2R: 0.02 in epoch 1, 0.1 to 75, 0.01 to 90, 0.001 to 100.
  fn = ts.learning_rate_schedule(
      _optim(schedule="piecewise", boundaries=(1, 75, 90), rates=(0.02, 0.1, 0.01, 0.001)),
      steps_per_epoch=4, num_epochs=100)
  got = [float(fn(s)) for s in (0, 3, 4, 299, 300, 359, 360, 399)]
  np.testing.assert_allclose(got, [0.02, 0.02, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_cyclic_schedule():
  fn = ts.learning_rate_schedule(_optim(schedule="cyclic", learning_rate=0.2,
                                        cyclic_peak_fraction=0.4), steps_per_epoch=10,
                                 num_epochs=10)
  np.testing.assert_allclose([float(fn(s)) for s in (0, 20, 40, 70, 100)],
                             [0.0, 0.1, 0.2, 0.1, 0.0], atol=1e-6)


def test_sgd_matches_pytorch_update():
  """PyTorch SGD: g' = g + wd p; buf = mu buf + g'; p -= lr buf (two steps by hand)."""
  optim = _optim(schedule="constant", learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
  tx = ts.make_optimizer(optim, ts.learning_rate_schedule(optim, 1, 1))
  p = {"w": jnp.array([1.0, -2.0])}
  g = {"w": jnp.array([0.5, 0.25])}
  opt_state = tx.init(p)
  p_ref, buf = np.array([1.0, -2.0]), np.zeros(2)
  for _ in range(2):
    updates, opt_state = tx.update(g, opt_state, p)
    p = optax.apply_updates(p, updates)
    buf = 0.9 * buf + (np.array([0.5, 0.25]) + 5e-4 * p_ref)
    p_ref = p_ref - 0.1 * buf
  np.testing.assert_allclose(p["w"], p_ref, rtol=1e-6)


def test_grad_clip_applies_before_weight_decay():
  optim = _optim(schedule="constant", learning_rate=1.0, momentum=0.0, weight_decay=0.1,
                 grad_clip_norm=1.0)
  tx = ts.make_optimizer(optim, ts.learning_rate_schedule(optim, 1, 1))
  p = {"w": jnp.array([2.0, 0.0])}
  updates, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(p), p)
  # clip (3, 4) to norm 1 -> (0.6, 0.8); add 0.1 * p -> (0.8, 0.8); lr 1.
  np.testing.assert_allclose(updates["w"], [-0.8, -0.8], rtol=1e-6)


def test_ema_warmup_and_update():
  np.testing.assert_allclose(float(ts.ema_decay_with_warmup(0.999, 0)), 0.1)
  np.testing.assert_allclose(float(ts.ema_decay_with_warmup(0.999, 10)), 11 / 20)
  np.testing.assert_allclose(float(ts.ema_decay_with_warmup(0.999, 10**6)), 0.999)
  out = ts.ema_update({"a": jnp.array(1.0)}, {"a": jnp.array(3.0)}, 0.75)
  np.testing.assert_allclose(float(out["a"]), 1.5)


def test_cyclic_momentum_and_steps_follow_pytorch_cyclic_lr_by_hand():
  """CyclicLR(base 0, max 0.2, up = down = N/2, cycle_momentum) over N = 5 iterations, by hand:
  s(k) = (k / 5) / 0.5 up to the peak, (k / 5 - 1) / (0.5 - 1) after; momentum 0.9 - 0.1 s."""
  optim = _optim(schedule="cyclic", learning_rate=0.2, cyclic_peak_fraction=0.5,
                 cycle_momentum=True, base_momentum=0.8, momentum=0.9, weight_decay=0.0)
  lr_fn = ts.learning_rate_schedule(optim, steps_per_epoch=5, num_epochs=1)
  mom_fn = ts.momentum_schedule(optim, steps_per_epoch=5, num_epochs=1)
  s = np.array([0.0, 0.4, 0.8, 0.8, 0.4])
  np.testing.assert_allclose([float(lr_fn(k)) for k in range(5)], 0.2 * s, atol=1e-7)
  np.testing.assert_allclose([float(mom_fn(k)) for k in range(5)], 0.9 - 0.1 * s, atol=1e-7)
  # The optimiser uses both: buf = m_k buf + g, p -= lr_k buf (PyTorch SGD), with g = 1.
  tx = ts.make_optimizer(optim, lr_fn, mom_fn)
  params = {"w": jnp.zeros(())}
  state, buf, want = tx.init(params), 0.0, 0.0
  for k in range(5):
    updates, state = tx.update({"w": jnp.ones(())}, state, params)
    params = optax.apply_updates(params, updates)
    buf = (0.9 - 0.1 * s[k]) * buf + 1.0 if k else 1.0
    want -= 0.2 * s[k] * buf
    np.testing.assert_allclose(float(params["w"]), want, rtol=1e-6, atol=1e-7)


def test_schedule_at_step_end_shifts_by_one_iteration():
  """Rice et al. set iteration k's rate from (k + 1) / L epochs: the drop comes one iteration
  before the epoch boundary."""
  optim = _optim(schedule="multistep", milestones=(2,), schedule_at_step_end=True)
  fn = ts.learning_rate_schedule(optim, steps_per_epoch=10, num_epochs=4)
  np.testing.assert_allclose([float(fn(k)) for k in (18, 19, 20)], [0.1, 0.01, 0.01], rtol=1e-6)


def test_the_restore_target_has_the_states_arrays_and_compiles_nothing():
  """`abstract_train_state` (what the evaluate command restores into): every array of
  `create_train_state`'s state, same path, shape and dtype, on the device given, and no model
  initialised (a ResNet-18's jitted init took 3.6 s to compile, only to be overwritten)."""
  from regmix_jax import methods, models  # pylint: disable=g-import-not-at-top  (this test only)
  config = config_lib.base_config()
  config.model.name, config.model.width, config.ema.enabled = "small_cnn", 4, True
  nets = models.build_models(config, methods.get_method(config.method.name).roles, 10)
  compiled = []
  listener = lambda event, *_, **__: compiled.append(event) if "backend_compile" in event else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    abstract = ts.abstract_train_state(config, nets, (8, 8, 3), 1, jax.devices()[-1])
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiled == []
  concrete = ts.create_train_state(config, nets, (8, 8, 3), 1)
  flat = lambda t: {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(t)}
  want, got = flat(concrete), flat(abstract)
  assert set(got) == set(want) and any("ema_params" in k for k in got)
  for k, v in want.items():
    assert isinstance(got[k], jax.ShapeDtypeStruct), k
    assert (got[k].shape, got[k].dtype) == (v.shape, v.dtype), k
    assert got[k].sharding.device_set == {jax.devices()[-1]}, k
