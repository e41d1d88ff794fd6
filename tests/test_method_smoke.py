"""Every registered method, through the registry and the production step: one mapped train step
on a tiny model gives a finite loss, moves every trained model's parameters, and reports exactly
the metrics the method documents (`Method.metrics`)."""

import jax
import numpy as np
import pytest

from regmix_jax import methods, train

import tiny_runs


def _tiny(name: str):
  config = tiny_runs.tiny_config(name, **{
      "data.synthetic.num_train": 64, "data.synthetic.num_test": 16,
      "data.synthetic.image_size": 8, "data.batch_size": 16, "data.eval_batch_size": 16,
      "guide_model.name": "small_cnn", "guide_model.width": 2, "ema.enabled": True,
      "eval.attacks": "clean",
      # No weight decay: a parameter that moves then moved because its loss gradient is not 0.
      "optim.weight_decay": 0.0})
  if "num_steps" in config.method:  # keep multi-step attacks cheap
    config.method.num_steps = 2
  return config


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_one_step_of_every_method(name):
  trainer = train.build_trainer(_tiny(name))
  before = trainer.create_state()
  device_state = trainer.data_parallel.put_state(before)
  if trainer.samples is not None:  # FGSM-PGK's buffers, initialised as at epoch 0
    trainer.samples.maybe_reset(trainer.config.method, 0, trainer.config.seed)
  index, batch = next(trainer.batches(0))
  device_state, metrics, sample_values = trainer.train_step(device_state, batch)
  metrics = jax.device_get(trainer.data_parallel.unreplicate(metrics))
  after = jax.device_get(trainer.data_parallel.unreplicate(device_state))

  assert np.isfinite(float(metrics["loss"]))
  method = methods.get_method(name)
  assert set(metrics) == set(method.metrics) | {"learning_rate", "ema_decay"}
  for role in method.roles:  # every trained model moved
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                         before.params[role], after.params[role])
    assert max(jax.tree.leaves(moved)) > 0, role
  assert int(after.step) == 1
  if trainer.samples is not None:
    values = trainer.data_parallel.get_batch(sample_values)
    assert set(values) == set(method.sample_state.names)
    assert all(v.shape == (len(index), 8, 8, 3) and np.isfinite(v).all() for v in values.values())
  else:
    assert not sample_values
