"""FGSM-PGK: one step derived by hand, and the life-cycle of its per-example buffers."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regmix_jax import checkpointing, config as config_lib, methods, parallel, sample_state
from regmix_jax import train_state as ts
from regmix_jax.methods import fgsm_pgk
from regmix_jax.train_step import bind_method, train_step


class Linear(nn.Module):
  """`z = flatten(x) @ W + b`: the step can be derived by hand."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


# Two images of 1x1x2 pixels, three classes. eps = alpha = 0.1, label smoothing 0.5 (the true
# class gets 0.5, the others 0.25), lam 2, mu 0.3.
W = np.array([[1.0, -0.5, 0.3], [-0.2, 0.8, 0.6]])
B_ = np.array([0.1, 0.0, -0.1])
X = np.array([[0.02, 0.7], [0.9, 0.98]])
Y = np.array([1, 2])
D0 = np.array([[0.05, -0.1], [-0.1, 0.1]])
M0 = np.array([[-2.0, -0.2], [0.0, -3.0]])
STEP = dict(epsilon=0.1, step_size=0.1, label_smoothing=0.5, lam=2.0, momentum_decay=0.3)
CFG = dict(fgsm_pgk.DEFAULTS, **STEP)
LR, WD, T = 0.1, 5e-4, 10**6  # learning rate, weight decay, global step (EMA warm-up ~ 1)


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def hand_step(tau):
  """The FGSM-PGK step in closed form (no autodiff): docs/methods.md ("FGSM-PGK") steps 1-7
  for `Linear`."""
  n, c = X.shape[0], 3
  y_s = np.full((n, c), 0.25)
  y_s[np.arange(n), Y] = 0.5
  clip = lambda d: np.clip(np.clip(d, -0.1, 0.1), -X, 1 - X)
  z0 = (X + D0) @ W + B_
  g = (_softmax(z0) - y_s) @ W.T / n  # d mean_b LSCE(z0) / d delta
  d_adv = clip(D0 + 0.1 * np.sign(g))
  za = (X + d_adv) @ W + B_
  r = (za.argmax(1) == Y).sum() / (z0.argmax(1) == Y).sum()
  m1 = g / np.abs(g).sum() * (2 - r) + 0.3 * M0
  d1 = clip(D0 + 0.1 * np.sign(m1))
  log_pa = za - za.max(1, keepdims=True)
  log_pa = log_pa - np.log(np.exp(log_pa).sum(1, keepdims=True))
  loss = np.mean(-(y_s * log_pa).sum(1) + 2.0 * ((za - z0) ** 2).mean(1))
  dza = (_softmax(za) - y_s) / n + 2.0 * 2 * (za - z0) / (n * c)
  dz0 = -2.0 * 2 * (za - z0) / (n * c)
  grad_w = (X + d_adv).T @ dza + (X + D0).T @ dz0
  grad_b = dza.sum(0) + dz0.sum(0)
  w1, b1 = W - LR * (grad_w + WD * W), B_ - LR * (grad_b + WD * B_)  # SGD, first momentum step
  base = 0.999 if r < tau else min(0.99999 * r / tau, 1.0)
  decay = min(base, (T + 1) / (T + 10))
  return dict(d_adv=d_adv, r=r, momentum=m1, prior=d1, loss=loss, w=w1, b=b1, decay=decay,
              ema_w=decay * W + (1 - decay) * w1, ema_b=decay * B_ + (1 - decay) * b1)


def test_hand_derivation_numbers():
  """The numbers of the hand derivation, written out (a check on the derivation itself)."""
  ref = hand_step(tau=0.82)
  # z0 = [[0.05, 0.445, 0.281], [0.684, 0.464, 0.788]]: both correct (n0 = 2).
  np.testing.assert_allclose(ref["d_adv"], [[0.1, -0.1], [0.0, 0.0]], atol=1e-12)
  assert ref["r"] == 0.5  # z_adv = [[0.1, 0.42, 0.296], [0.804, 0.334, 0.758]]: na = 1
  np.testing.assert_allclose(ref["momentum"], [[-0.016460, -0.271583], [0.276458, -1.328419]],
                             atol=1e-6)
  # From d0, not d_adv; the first pixel is clipped to -x = -0.02 by the [0, 1] box.
  np.testing.assert_allclose(ref["prior"], [[-0.02, -0.1], [0.0, 0.0]], atol=1e-12)


def _state(tau, **method_overrides):
  config = config_lib.base_config()
  config.method = methods.method_config("fgsm_pgk", **{**CFG, "ema_threshold": tau,
                                                       **method_overrides})
  config.optim.schedule = "constant"
  config.optim.learning_rate = LR
  config.optim.weight_decay = WD
  config.ema.enabled = True
  nets = {"target": Linear()}
  state = ts.create_train_state(config, nets, (1, 1, 2), steps_per_epoch=1)
  params = {"target": {"Dense_0": {"kernel": jnp.asarray(W, jnp.float32),
                                   "bias": jnp.asarray(B_, jnp.float32)}}}
  # T steps done, each with an EMA update (the warm-up counts EMA updates).
  state = state.replace(step=jnp.asarray(T, jnp.int32), ema_steps=jnp.asarray(T, jnp.int32),
                        params=params, opt_state=state.tx.init(params), ema_params=params)
  method = bind_method(fgsm_pgk.loss, nets, config.method)
  return state, method


def _hand_batch():
  """The hand derivation's two examples as a train-step batch (float images, see
  `_float_images`), with their prior and momentum."""
  return {"image": X.reshape(2, 1, 1, 2).astype(np.float32), "label": Y.astype(np.int32),
          "index": np.arange(2, dtype=np.int32), "mask": np.ones(2, bool),
          "sample": {"prior": D0.reshape(2, 1, 1, 2).astype(np.float32),
                     "momentum": M0.reshape(2, 1, 1, 2).astype(np.float32)}}


@pytest.mark.parametrize("tau", [0.82, 0.45, 0.5])  # r < tau; r/tau > 1/0.99999; r == tau
def test_library_step_matches_hand_derivation(tau):
  ref = hand_step(tau)
  state, method = _state(tau)
  batch = _hand_batch()
  # The train step takes uint8 images; feed the float images by skipping its conversion.
  step = functools.partial(train_step, method=method, augment=False)
  new_state, metrics, sample = jax.jit(_float_images(step))(state, batch)
  np.testing.assert_allclose(sample["prior"].reshape(2, 2), ref["prior"], atol=1e-6)
  np.testing.assert_allclose(sample["momentum"].reshape(2, 2), ref["momentum"], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], ref["loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics["ratio"], ref["r"], rtol=1e-6)
  np.testing.assert_allclose(metrics["ema_decay"], ref["decay"], rtol=1e-7)
  p = new_state.params["target"]["Dense_0"]
  assert int(new_state.ema_steps) == T + 1
  np.testing.assert_allclose(p["kernel"], ref["w"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(p["bias"], ref["b"], rtol=1e-5, atol=1e-7)
  e = new_state.ema_params["target"]["Dense_0"]
  np.testing.assert_allclose(e["kernel"], ref["ema_w"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(e["bias"], ref["ema_b"], rtol=1e-5, atol=1e-7)


def _float_images(step):
  """Runs `step` on float images in [0, 1]: scales them to the uint8 range it expects, as
  floats, so that `/ 255` gives them back exactly (to float rounding)."""
  def run(state, batch):
    return step(state, {**batch, "image": batch["image"] * 255.0})
  return run


def _spec_cfg(**overrides):
  return dict(fgsm_pgk.DEFAULTS, **overrides)


def _buffers(num_examples=10, num_shards=4, shard_ids=(0, 1, 2, 3)):
  return sample_state.SampleState(fgsm_pgk.SAMPLE_STATE, num_examples=num_examples,
                                  image_shape=(2, 2, 3), num_shards=num_shards,
                                  shard_ids=shard_ids)


def test_reset_epochs_and_initial_values():
  buffers = _buffers()
  cfg = _spec_cfg(reset_every=10, epsilon=8 / 255, step_size=6 / 255)
  assert [e for e in range(25) if buffers.maybe_reset(cfg, e, seed=0)] == [0, 10, 20]
  prior, momentum = buffers.arrays["prior"], buffers.arrays["momentum"]
  # clip_eps(alpha * sign(U(-eps, eps))): random signs of size min(alpha, eps).
  np.testing.assert_allclose(np.abs(prior), 6 / 255, rtol=1e-6)
  assert 0.3 < (prior > 0).mean() < 0.7
  assert not momentum.any()
  # A reset overwrites what training wrote.
  buffers.scatter(np.arange(10), {"prior": np.zeros((10, 2, 2, 3)),
                                  "momentum": np.ones((10, 2, 2, 3))})
  assert not buffers.maybe_reset(cfg, 11, seed=0)
  assert buffers.arrays["momentum"][buffers.rows(np.arange(10))].all()
  buffers.maybe_reset(cfg, 30, seed=0)
  assert not buffers.arrays["momentum"].any()
  np.testing.assert_allclose(np.abs(buffers.arrays["prior"]), 6 / 255, rtol=1e-6)


def test_indices_survive_shuffling():
  buffers = _buffers(num_examples=11)
  values = np.random.default_rng(0).normal(size=(11, 2, 2, 3)).astype(np.float32)
  for perm_seed in range(3):  # written in one shuffled order, read in others
    order = np.random.default_rng(perm_seed).permutation(11)
    for chunk in np.array_split(order, 4):
      buffers.scatter(chunk, {"prior": values[chunk], "momentum": -values[chunk]})
    read = np.random.default_rng(perm_seed + 10).permutation(11)
    got = buffers.gather(read)
    np.testing.assert_array_equal(got["prior"], values[read])
    np.testing.assert_array_equal(got["momentum"], -values[read])


def test_per_process_shards_hold_only_their_examples():
  whole = _buffers(num_examples=10)
  halves = [_buffers(num_examples=10, shard_ids=ids) for ids in ((0, 1), (2, 3))]
  cfg = _spec_cfg()
  for b in (whole, *halves):
    b.maybe_reset(cfg, 0, seed=3)
  for half, ids in zip(halves, ((0, 1), (2, 3))):
    mine = np.array([i for i in range(10) if i % 4 in ids])
    assert half.arrays["prior"].shape[0] == 2 * 3  # two shards of ceil(10 / 4) rows
    # The same initial values whichever process holds a shard.
    np.testing.assert_array_equal(half.gather(mine)["prior"], whole.gather(mine)["prior"])
    others = np.array([i for i in range(10) if i % 4 not in ids])
    with pytest.raises(IndexError, match="not held by this process"):
      half.gather(others[:1])


def test_checkpoint_round_trip_restores_buffers(tmp_path):
  buffers = _buffers(num_examples=10)
  buffers.maybe_reset(_spec_cfg(), 0, seed=0)
  values = np.random.default_rng(1).normal(size=(10, 2, 2, 3)).astype(np.float32)
  buffers.scatter(np.arange(10), {"prior": values, "momentum": 2 * values})
  par = parallel.DataParallel("pmap", devices=jax.devices()[:4])
  ckpt = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  state = {"w": np.arange(3.0)}
  ckpt.save(5, state, {"epoch": 1}, sample=buffers.to_global(par.mesh))
  buffers.scatter(np.arange(10), {"prior": 0 * values, "momentum": 0 * values})  # after saving
  ckpt.close()
  fresh = _buffers(num_examples=10)
  ckpt = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  restored_state, meta, sample = ckpt.restore(state, sample_target=fresh.abstract_global(par.mesh))
  fresh.load_global(sample)
  np.testing.assert_array_equal(fresh.gather(np.arange(10))["prior"], values)
  np.testing.assert_array_equal(fresh.gather(np.arange(10))["momentum"], 2 * values)
  assert meta == {"epoch": 1}
  np.testing.assert_array_equal(restored_state["w"], np.arange(3.0))
  ckpt.close()


def _step_with(name, **overrides):
  config = config_lib.base_config()
  config.method = methods.method_config(name, **{**STEP, **overrides})
  config.optim.schedule = "constant"
  config.ema.enabled = True
  nets = {"target": Linear()}
  state = ts.create_train_state(config, nets, (1, 1, 2), steps_per_epoch=1)
  method = bind_method(methods.get_method(name).loss, nets, config.method)
  batch = {"image": X.reshape(2, 1, 1, 2).astype(np.float32) * 255, "label": Y.astype(np.int32),
           "index": np.arange(2, dtype=np.int32), "mask": np.ones(2, bool),
           "sample": {"prior": D0.reshape(2, 1, 1, 2).astype(np.float32),
                      "momentum": M0.reshape(2, 1, 1, 2).astype(np.float32)}}
  return jax.jit(functools.partial(train_step, method=method, augment=False))(state, batch)


def test_fgsm_agr_with_mse_and_smoothed_target_is_exactly_fgsm_pgk():
  pgk = _step_with("fgsm_pgk")
  agr_as_pgk = _step_with("fgsm_agr", regularizer="mse", target="smoothed")
  for a, b in zip(jax.tree.leaves(pgk), jax.tree.leaves(agr_as_pgk)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  agr = _step_with("fgsm_agr")  # its own regulariser and target: another step
  assert not np.allclose(agr[0].params["target"]["Dense_0"]["kernel"],
                         pgk[0].params["target"]["Dense_0"]["kernel"])
  # The buffers do not depend on the objective (same perturbation loop).
  np.testing.assert_array_equal(agr[2]["prior"], pgk[2]["prior"])


@pytest.mark.parametrize("tau", [0.82, 0.45])  # r = 0.5 < tau: no update; r >= tau: update
def test_cifar100_teacher_moves_only_when_the_ratio_reaches_tau(tau):
  """FGSM_PGK_CIFAR100.py:338-348: the teacher (and its warm-up counter) moves only on steps with
  r >= tau; the parameters train as usual."""
  ref = hand_step(tau)
  state, method = _state(tau, ema_update="ratio_at_least_tau")
  state = state.replace(ema_steps=jnp.asarray(4, jnp.int32))  # fewer updates than steps
  batch = _hand_batch()
  step = functools.partial(train_step, method=method, augment=False)
  new_state, metrics, _ = jax.jit(_float_images(step))(state, batch)
  p, e = new_state.params["target"]["Dense_0"], new_state.ema_params["target"]["Dense_0"]
  np.testing.assert_allclose(p["kernel"], ref["w"], rtol=1e-5, atol=1e-7)
  if ref["r"] < tau:
    assert int(new_state.ema_steps) == 4 and float(metrics["ema_applied"]) == 0.0
    np.testing.assert_array_equal(e["kernel"], W.astype(np.float32))
  else:
    base = min(0.99999 * ref["r"] / tau, 1.0)
    decay = min(base, (4 + 1) / (4 + 10))  # the warm-up at 4 updates, not at step T
    assert int(new_state.ema_steps) == 5 and float(metrics["ema_applied"]) == 1.0
    np.testing.assert_allclose(e["kernel"], decay * W + (1 - decay) * ref["w"], rtol=1e-5,
                               atol=1e-7)
