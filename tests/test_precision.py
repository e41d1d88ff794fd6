"""Mixed precision (`model.dtype = "bfloat16"`): every convolution of a train step computes in
bfloat16, for every method and both D2R models, while parameters, optimiser state, EMA, the
loss, the metrics and the per-example buffers stay float32; the evaluation computes in
`eval.dtype` (float32 by default)."""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from regmix_jax import config as config_lib
from regmix_jax import methods, models, train, train_state
from regmix_jax.methods import trades
from regmix_jax.train_step import bind_method, train_step


def _config(name, dtype="bfloat16"):
  config = config_lib.base_config()
  config.method = methods.method_config(name)
  if "num_steps" in config.method:
    config.method.num_steps = 2
  config.data.source = "synthetic"
  config.data.synthetic.update(num_train=32, num_test=16, image_size=8)
  config.data.batch_size = config.data.eval_batch_size = 8
  config.model.name, config.model.width = "small_cnn", 4
  config.guide_model.name, config.guide_model.width = "small_cnn", 2
  config.model.dtype = dtype
  if name == "trades":  # its attack's first step is float32 by design: tested below
    config.method.first_step_float32 = False
  config.model.sync_batch_norm = False  # the step runs on one device, outside a mapping
  config.ema.enabled = True
  config.eval.attacks = "clean,pgd2"
  return config


def _convolutions(jaxpr):
  """Every conv_general_dilated equation of a closed jaxpr, sub-jaxprs (jit, loops, custom
  derivatives) included."""
  found = []

  def walk(j):
    for eqn in j.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        found.append(eqn)
      for value in eqn.params.values():
        for sub in (value if isinstance(value, (tuple, list)) else (value,)):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            walk(sub)
  walk(jaxpr.jaxpr)
  return found


def _step_and_batch(name, dtype="bfloat16"):
  config = _config(name, dtype)
  method = methods.get_method(name)
  nets = models.build_models(config, method.roles, 10)
  state = train_state.create_train_state(config, nets, (8, 8, 3), steps_per_epoch=4)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, 8, 8, 3)).astype(np.uint8),
           "label": rng.integers(0, 10, 8).astype(np.int32),
           "index": np.arange(8, dtype=np.int32), "mask": np.ones(8, bool)}
  if method.sample_state is not None:
    batch["sample"] = {k: np.zeros((8, 8, 8, 3), np.float32) for k in method.sample_state.names}
  step = functools.partial(train_step, method=bind_method(method.loss, nets, config.method),
                           post_update=(None if method.post_update is None else
                                        bind_method(method.post_update, nets, config.method)))
  return step, state, batch


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_bfloat16_policy_computes_convolutions_in_bf16_and_keeps_the_rest_float32(name):
  step, state, batch = _step_and_batch(name)
  convolutions = _convolutions(jax.make_jaxpr(step)(state, batch))
  assert convolutions
  for eqn in convolutions:  # forward, input-gradient and kernel-gradient convolutions alike
    assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2, eqn
  new_state, metrics, sample = jax.jit(step)(state, batch)
  for tree in (new_state.params, new_state.opt_state, new_state.ema_params,
               new_state.batch_stats, new_state.ema_batch_stats, metrics, sample):
    for leaf in jax.tree.leaves(tree):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == jnp.float32
  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))


def test_trades_first_attack_step_is_float32_s_under_a_bf16_policy():
  """The guarded behaviour: from x + 0.001 N(0, I) TRADES' first KL step has a second-order
  gradient, whose signs bf16 rounding scrambles (here half of the pixels of x' differ from
  float32's). With `first_step_float32` (the default) the bf16 policy's one-step x' is float32's,
  bit for bit, from the same start."""
  cfg = {**trades.DEFAULTS, "num_steps": 1}
  x = jax.random.uniform(jax.random.key(0), (16, 16, 16, 3))
  nets = {d: {"target": models.get_model("small_cnn", 10, width=8, dtype=d)}
          for d in ("float32", "bfloat16")}
  variables = nets["float32"]["target"].init(jax.random.key(1), x, train=False)
  params, stats = {"target": variables["params"]}, {"target": variables["batch_stats"]}
  keys = jax.random.split(jax.random.key(2), 16)
  adversarial = lambda dtype, cfg: trades.adversarial_examples(params, stats, x, keys,
                                                               models=nets[dtype], cfg=cfg)
  reference = adversarial("float32", cfg)
  np.testing.assert_array_equal(np.asarray(adversarial("bfloat16", cfg)), np.asarray(reference))
  scrambled = adversarial("bfloat16", {**cfg, "first_step_float32": False})
  assert float(jnp.mean(scrambled != reference)) > 0.3  # what the float32 step avoids
  # Later steps run in the policy's dtype: with 3 steps, x' is no longer float32's.
  three = {**cfg, "num_steps": 3}
  assert float(jnp.mean(adversarial("bfloat16", three) != adversarial("float32", three))) > 0


def test_float32_policy_has_no_bf16_and_evaluation_defaults_to_float32():
  step, state, batch = _step_and_batch("trades", dtype="float32")
  assert all(v.aval.dtype == jnp.float32 for eqn in _convolutions(jax.make_jaxpr(step)(
      state, batch)) for v in eqn.invars)
  config = _config("fgsm_rs")  # trains in bf16 ...
  trainer = train.build_trainer(config)
  assert trainer.models["target"].dtype == jnp.bfloat16
  device_state = trainer.data_parallel.put_state(trainer.create_state())
  _, batch = next(trainer.batches(0))
  jaxpr = jax.make_jaxpr(trainer.eval_steps["target"])(device_state, batch)
  convolutions = _convolutions(jaxpr)
  assert convolutions and all(v.aval.dtype == jnp.float32  # ... and evaluates in float32
                              for eqn in convolutions for v in eqn.invars)


@pytest.mark.parametrize("name,sizes", [("small_cnn", {"width": 4}), ("resnet18", {}),
                                        ("preact_resnet18", {}),
                                        ("wrn", {"depth": 10, "width": 1}),
                                        ("dm_wrn", {"depth": 10, "width": 1}),
                                        ("dm_preact_resnet18", {})])
def test_first_conv_float32_keeps_the_pixels_float32_through_the_first_layer_only(name, sizes):
  """`model.first_conv_float32`: under a bf16 policy the first convolution alone computes in
  float32 on float32 pixels, so a change of pixels below bf16's resolution (0.0019 at 0.5, where
  bf16 steps by 2^-8) reaches the logits; without it the bf16 model cannot see it. The parameters
  are the same tree (checkpoints interchangeable), and a float32 model is unchanged bit for bit."""
  x = jnp.full((2, 32, 32, 3), 0.5, jnp.float32)
  nudged = x.at[:, 4:28, 4:28, :].add(0.0019)
  build = lambda dtype, first: models.get_model(name, 10, dtype=dtype, first_conv_float32=first,
                                                **sizes)
  variables = build("float32", False).init(jax.random.key(0), x, train=False)
  assert (jax.tree.structure(build("bfloat16", True).init(jax.random.key(0), x, train=False))
          == jax.tree.structure(variables))
  logits = lambda net, z: np.asarray(jax.jit(lambda z: net.apply(variables, z, train=False))(z))
  plain, first = build("bfloat16", False), build("bfloat16", True)
  np.testing.assert_array_equal(logits(plain, nudged), logits(plain, x))
  assert np.any(logits(first, nudged) != logits(first, x))
  conv_dtypes = [tuple(v.aval.dtype for v in eqn.invars) for eqn in _convolutions(
      jax.make_jaxpr(lambda z: first.apply(variables, z, train=False))(x))]
  assert conv_dtypes[0] == (jnp.float32, jnp.float32)
  assert all(d == (jnp.bfloat16, jnp.bfloat16) for d in conv_dtypes[1:])
  np.testing.assert_array_equal(logits(build("float32", True), nudged),
                                logits(build("float32", False), nudged))
  config = _config("fgsm_pgk")
  config.model.first_conv_float32 = True
  assert models.build_models(config, ("target",), 10)["target"].first_conv_float32
