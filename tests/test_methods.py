"""Training methods against simpler ones they must reduce to."""

import jax
import numpy as np

from regmix_jax import methods, models, rng
from regmix_jax import config as config_lib
from regmix_jax import train_state as ts


def _loss_and_grads(name, **overrides):
  config = config_lib.base_config()
  config.method = methods.method_config(name, **overrides)
  nets = {"target": models.get_model("small_cnn", 10, width=4)}
  state = ts.create_train_state(config, nets, (16, 16, 3), steps_per_epoch=1)
  r = np.random.default_rng(0)
  batch = {"image": r.uniform(size=(8, 16, 16, 3)).astype(np.float32),
           "label": r.integers(0, 10, 8).astype(np.int32), "index": np.arange(8, dtype=np.int32)}
  keys = rng.example_keys(jax.random.key(0), batch["index"])
  loss = methods.get_method(name).loss
  def objective(params):
    out = loss(params, state.batch_stats, batch, keys, models=nets, cfg=dict(config.method))
    return out.loss, out
  return jax.grad(objective, has_aux=True)(state.params)


def test_trades_with_beta_zero_is_clean_cross_entropy():
  grads_trades, out_trades = _loss_and_grads("trades", beta=0.0)
  grads_std, out_std = _loss_and_grads("standard")
  np.testing.assert_allclose(out_trades.loss, out_std.loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               grads_trades, grads_std)
  # Two train-mode passes (x, then x'): the running statistics moved further than with one.
  moved = lambda out: np.abs(np.asarray(
      jax.tree.leaves(out.batch_stats["target"])[0])).sum()
  assert moved(out_trades) != moved(out_std)


def test_trades_beta_adds_the_kl_term():
  _, out0 = _loss_and_grads("trades", beta=0.0)
  _, out6 = _loss_and_grads("trades", beta=6.0)
  assert float(out6.loss) > float(out0.loss)
