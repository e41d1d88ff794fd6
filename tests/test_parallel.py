"""One train step gives the same result on 1 device, under pmap on 4 and under shard_map on 4."""

import functools

import jax
import numpy as np
import pytest

from regmix_jax import config as config_lib
from regmix_jax import methods, models, parallel
from regmix_jax import train_state as ts
from regmix_jax.train_step import bind_method, train_step


def _setup(method_name, axis_name):
  config = config_lib.base_config()
  config.method = methods.method_config(method_name)
  if "num_steps" in config.method:
    config.method.num_steps = 2
  config.ema.enabled = True
  config.optim.schedule = "constant"
  if method_name == "fgsm_pgk":
    config.method.epsilon = config.method.step_size = 0.1
  method = methods.get_method(method_name)
  nets = {role: models.get_model("small_cnn", 10, axis_name=axis_name, width=4 + 2 * i)
          for i, role in enumerate(method.roles)}  # D2R: a guide beside the target
  state = ts.create_train_state(config, nets, (16, 16, 3), steps_per_epoch=10)
  return state, bind_method(method.loss, nets, config.method)


def _batch(method_name, n=16):
  r = np.random.default_rng(0)
  batch = {"image": r.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
           "label": r.integers(0, 10, (n,)).astype(np.int32),
           "index": np.arange(100, 100 + n, dtype=np.int32),
           "mask": np.ones((n,), bool)}
  if method_name == "fgsm_pgk":  # per-example buffers
    batch["sample"] = {"prior": 0.1 * np.sign(r.normal(size=(n, 16, 16, 3))).astype(np.float32),
                       "momentum": 1e-4 * r.normal(size=(n, 16, 16, 3)).astype(np.float32)}
  return batch


@pytest.mark.parametrize("method_name", ["standard", "pgd_at", "fgsm_pgk", "d2r"])
def test_single_device_pmap_and_shard_map_agree(method_name):
  batch = _batch(method_name)
  state, bound = _setup(method_name, axis_name=None)
  single = jax.jit(functools.partial(train_step, method=bound))
  ref_state, ref_metrics, ref_sample = single(state, batch)
  # Two steps: momentum and EMA engaged.
  ref_state, ref_metrics2, ref_sample2 = single(ref_state, {**batch, "sample": ref_sample})

  devices = jax.devices()[:4]
  assert len(devices) == 4
  state_p, bound_p = _setup(method_name, axis_name=parallel.AXIS)
  for kind in ("pmap", "shard_map"):
    par = parallel.DataParallel(kind, devices=devices)
    step = par.map(functools.partial(train_step, method=bound_p), donate_state=False,
                   batch_outputs=(False, False, True))
    dstate, metrics, sample = step(par.put_state(state_p), par.put_batch(batch))
    sample = par.get_batch(sample)
    dstate, metrics2, sample2 = step(dstate, par.put_batch({**batch, "sample": sample}))
    sample2 = par.get_batch(sample2)
    out = jax.device_get(par.unreplicate(dstate))
    for got, want in ((sample, ref_sample), (sample2, ref_sample2)):  # per-example outputs
      assert set(got) == set(want)
      for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6, err_msg=name)
    for name in ("loss", "accuracy"):
      np.testing.assert_allclose(np.asarray(par.unreplicate(metrics)[name]),
                                 ref_metrics[name], rtol=1e-5, err_msg=f"{kind} {name}")
      np.testing.assert_allclose(np.asarray(par.unreplicate(metrics2)[name]),
                                 ref_metrics2[name], rtol=1e-5, err_msg=f"{kind} {name}")
    for tree in ("params", "batch_stats", "ema_params", "opt_state"):
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6,
                                                           err_msg=f"{kind} {tree}"),
                   getattr(out, tree), jax.device_get(getattr(ref_state, tree)))
    assert int(out.step) == 2
  # The step did something: parameters moved.
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                       ref_state.params, state.params)
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_unreplicate_reads_the_first_device_copy_without_a_collective():
  devices = jax.devices()[:4]
  par = parallel.DataParallel("pmap", devices=devices)
  rows = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)  # a different row on each device
  out = par.unreplicate({**par.put_batch({"a": rows}), "b": np.array([5, 6, 7, 8])})
  np.testing.assert_array_equal(np.asarray(out["a"]), rows[:1])
  assert out["b"] == 5
  # One copy on the first device: indexing the global array instead gives a 4-device result (an
  # all-reduce over the devices).
  assert out["a"].devices() == {devices[0]}
