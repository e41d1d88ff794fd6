"""eval_step: padding rows count for nothing, EMA weights are the ones evaluated, attacks parse."""

import functools

import jax
import numpy as np
import pytest

from regmix_jax import config as config_lib
from regmix_jax import attacks, evaluation, models, parallel
from regmix_jax import train_state as ts


def _state(ema: bool):
  config = config_lib.base_config()
  config.ema.enabled = ema
  net = models.get_model("small_cnn", 10, width=4)
  return net, ts.create_train_state(config, {"target": net}, (16, 16, 3), steps_per_epoch=1)


def _batch(n=8, real=5):
  r = np.random.default_rng(0)
  return {"image": r.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
          "label": r.integers(0, 10, (n,)).astype(np.int32),
          "index": np.arange(n, dtype=np.int32), "mask": np.arange(n) < real}


def test_padding_rows_are_not_counted_and_match_a_manual_count():
  net, state = _state(ema=False)
  batch = _batch()
  attack_list = attacks.parse_attacks("clean")
  counts = jax.jit(functools.partial(evaluation.eval_step, model=net, attack_list=attack_list))(
      state, batch)
  logits = net.apply(state.eval_variables(), batch["image"] / 255.0, train=False)
  manual = (np.argmax(logits, -1) == batch["label"])[:5].sum()
  assert float(counts["count"]) == 5
  assert float(counts["clean"]) == manual
  # Labels of padding rows are irrelevant.
  flipped = dict(batch, label=np.where(batch["mask"], batch["label"], (batch["label"] + 1) % 10))
  again = evaluation.eval_step(state, flipped, model=net, attack_list=attack_list)
  assert float(again["clean"]) == float(counts["clean"])


def test_ema_weights_are_evaluated():
  net, state = _state(ema=True)
  # Make the EMA head predict class 3 for everything; the live parameters do not.
  head = state.ema_params["target"]["linear"]
  bias = np.full(10, -100.0, np.float32)
  bias[3] = 100.0
  ema_params = {"target": {**state.ema_params["target"],
                           "linear": {"kernel": head["kernel"] * 0, "bias": bias}}}
  state = state.replace(ema_params=ema_params)
  batch = _batch(n=8, real=8)
  batch["label"] = np.full(8, 3, np.int32)
  counts = evaluation.eval_step(state, batch, model=net, attack_list=attacks.parse_attacks("clean"))
  assert float(counts["clean"]) == 8


@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_eval_step_counts_summed_over_devices_on_the_host(kind):
  net = models.get_model("small_cnn", 10, width=4)
  _, state = _state(ema=False)
  batch = _batch(n=8, real=6)
  attack_list = attacks.parse_attacks("clean,pgd2")
  single = evaluation.eval_step(state, batch, model=net, attack_list=attack_list)
  par = parallel.DataParallel(kind, devices=jax.devices()[:4])
  step = par.map(functools.partial(evaluation.eval_step, model=net, attack_list=attack_list),
                 donate_state=False, per_device_outputs=True)
  multi = par.host_sum(step(par.put_state(state), par.put_batch(batch)))
  assert float(multi["count"]) == 6
  for k in single:
    np.testing.assert_allclose(float(multi[k]), float(single[k]))


def test_parse_attacks():
  parsed = attacks.parse_attacks("clean, pgd20,cw10,fgsm")
  assert [n for n, _ in parsed] == ["clean", "pgd20", "cw10", "fgsm"]
  assert parsed[1][1].keywords["num_steps"] == 20 and parsed[1][1].keywords["early_stop"]
  with pytest.raises(ValueError, match="eval.attacks"):
    attacks.parse_attacks("pgd0")
