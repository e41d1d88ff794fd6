"""`trades`: TRADES (Zhang et al. 2019), `CE(f(x), y) + beta * KL(P(f(x)) || P(f(x')))`, as the
released code (yaodongyu/TRADES@6e8e11b trades.py; defaults from train_trades_cifar10.py).

x' maximises the same KL (reference: the clean distribution) from `x + 0.001 N(0, I)` with 10
signed steps of 0.007 inside eps = 0.031 (train_trades_cifar10.py:30-35), the model in eval mode
(trades.py:27-41). Training runs the model in train mode three times, as trades.py:79-82 does:
on x for the cross-entropy, on x', and on x again for the KL's reference, so the BatchNorm
running statistics move three times per step (x, x', x). The third pass's output equals the
first's (train-mode BatchNorm uses the batch's own statistics), so the loss uses the first for
both terms and only the third pass's running statistics are kept from it; P(f(x)) is not
detached. beta 6 (l.36).

Under a bfloat16 policy (`model.dtype`), the attack's first step runs the model in float32
(`first_step_float32`, ours: the released code is float32 throughout). That step starts at the
KL's minimum (x' = x + 0.001 N(0, I), reference P(f(x))), where the gradient is second order;
in bfloat16, 61% of the pixels of x + 0.001 N(0, I) round to those of x and the logits' rounding
is larger than the differences, so the first step's signs agreed with float32's on 51% of the
pixels (chance), against 98-99% for every later step (small CNN trained with TRADES, 256 test
images; experiments/results/precision_accuracy.md). The other steps run in the policy's dtype.
"""

import functools

import jax
import jax.numpy as jnp

from regmix_jax import attacks, losses
from regmix_jax.methods import base

NAME = "trades"
DEFAULTS = {"epsilon": 0.031, "step_size": 0.007, "num_steps": 10, "init_std": 0.001,
            "beta": 6.0,
            "first_step_float32": True}  # ours, for bfloat16 policies only (docstring)
METRICS = base.ROBUST_METRICS
RANGES = {"epsilon": base.POSITIVE, "step_size": base.POSITIVE, "num_steps": (1, None),
          "init_std": base.NON_NEGATIVE, "beta": (0.0, None)}


def adversarial_examples(params, batch_stats, x, keys, *, models, cfg):
  """TRADES' x' `[B, H, W, C]` for clean `x`: the target in eval mode maximises
  `KL(P(f(x)) || P(f(x')))`; under a bfloat16 policy the first step in float32 (module
  docstring, `first_step_float32`)."""
  eval_logits = base.logits_fn(models, "target", params, batch_stats, train=False)
  reference = jax.lax.stop_gradient(eval_logits(x))
  attack = functools.partial(attacks.pgd, epsilon=cfg["epsilon"], step_size=cfg["step_size"],
                             loss="kl", init_std=cfg["init_std"])
  if (cfg["first_step_float32"] and cfg["num_steps"] > 0
      and jnp.dtype(models["target"].dtype) != jnp.float32):  # a dtype or its name
    float32 = {**models, "target": models["target"].clone(dtype=jnp.float32)}
    logits32 = base.logits_fn(float32, "target", params, batch_stats, train=False)
    first = attack(logits32, x, jax.lax.stop_gradient(logits32(x)), keys, num_steps=1)
    return attack(eval_logits, x, reference, keys, num_steps=cfg["num_steps"] - 1, start=first)
  return attack(eval_logits, x, reference, keys, num_steps=cfg["num_steps"])


def loss(params, batch_stats, batch, keys, *, models, cfg, axis_name=None):
  del axis_name
  x, y = batch["image"], batch["label"]
  x_adv = adversarial_examples(params, batch_stats, x, keys, models=models, cfg=cfg)
  clean, adv, stats = base.clean_then_adversarial(models, params, batch_stats, x, x_adv)
  # The third train-mode pass on x (trades.py:82), for its running statistics.
  _, target_stats = base.apply_model(models, "target", jax.lax.stop_gradient(params), stats, x,
                                     train=True)
  per_example = losses.trades_loss(clean, adv, y, beta=cfg["beta"])
  return base.robust_output(per_example, clean, adv, y, {**stats, "target": target_stats})
