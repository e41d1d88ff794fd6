"""On a briefly trained small model: clean >= FGSM >= PGD-10 >= PGD-50 accuracy on the same points,
and C&W-20 below clean; AutoAttack at most PGD-50 and C&W-20."""

import functools

import jax
import pytest

from regmix_jax import config as config_lib
from regmix_jax import attacks, cpu, data, evaluation, methods, models
from regmix_jax import train_state as ts
from regmix_jax.train_step import bind_method, train_step


@pytest.fixture
def optimized():
  """XLA optimisations on for this test: it runs ~100 training and attack steps, which the
  suite-wide `jax_disable_most_optimizations` (there to cut compile time) makes slow."""
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", True)


def test_stronger_attacks_give_lower_accuracy(optimized):
  del optimized
  dataset = data.synthetic(num_train=512, num_test=256, image_size=16, seed=1)
  config = config_lib.base_config()
  config.method = methods.method_config("standard")
  config.optim.schedule = "constant"
  config.optim.learning_rate = 0.05
  # The CPU plug-in's convolutions (what the commands run here): this test's subject is the
  # attacks' order, and inside their loops lax's input gradient runs XLA:CPU's naive loop nest,
  # which doubled the test's time. Every other core test runs lax's convolution.
  net = models.get_model("small_cnn", 10, width=8, conv=cpu.Convolutions("xla").conv)
  state = ts.create_train_state(config, {"target": net}, (16, 16, 3), steps_per_epoch=16)
  step = jax.jit(functools.partial(
      train_step, method=bind_method(methods.get_method("standard").loss, {"target": net}, {}),
      augment=False))
  loader = data.TrainLoader(dataset.train, batch_size=64, num_shards=1, shard_ids=[0], seed=0)
  for epoch in range(4):
    for batch in loader.epoch(epoch):
      state, _, _ = step(state, batch)

  attack_list = attacks.parse_attacks("clean,fgsm,pgd10,pgd50,cw20", epsilon=4 / 255,
                                       step_size=1 / 255)
  eval_fn = jax.jit(functools.partial(evaluation.eval_step, model=net, attack_list=attack_list))
  acc = evaluation.accuracies(data.eval_batches(dataset.test, batch_size=256), lambda b: eval_fn(state, b))
  assert acc["clean"] > 0.6, acc  # trained well above chance (0.1)
  assert acc["clean"] >= acc["fgsm"] >= acc["pgd10"] >= acc["pgd50"], acc
  assert acc["pgd50"] < acc["clean"] - 0.1, acc  # the attacks do something
  assert acc["cw20"] < acc["clean"], acc

  # AutoAttack (standard) on the first 64 points: at most PGD-50 and C&W-20 on those points.
  few = data.eval_batches(dataset.test, batch_size=64, num_examples=64)
  aa_list = attacks.parse_attacks("pgd50,cw20,aa", epsilon=4 / 255, step_size=1 / 255)
  aa_fn = jax.jit(functools.partial(evaluation.eval_step, model=net, attack_list=aa_list))
  acc = evaluation.accuracies(few, lambda b: aa_fn(state, b))
  assert acc["aa"] <= min(acc["pgd50"], acc["cw20"]), acc
