"""`trades`: TRADES (Zhang et al. 2019), `CE(f(x), y) + beta * KL(P(f(x)) || P(f(x')))`.

x' maximises the same KL (reference: the clean distribution) from `x + 0.001 N(0, I)` with 10
signed steps of 0.007 inside eps = 0.031, the model in inference mode (the released code's
`model.eval()`). Training runs the model in train mode on x, then on x' (BatchNorm running
statistics updated twice per step, in that order, as the released code); P(f(x)) is not detached.
"""

import jax

from regmix_jax import attacks, losses
from regmix_jax.methods import base

NAME = "trades"
DEFAULTS = {"epsilon": 0.031, "step_size": 0.007, "num_steps": 10, "init_std": 0.001,
            "beta": 6.0}
METRICS = base.ROBUST_METRICS


def loss(params, batch_stats, batch, keys, *, models, cfg, axis_name=None):
  del axis_name
  x, y = batch["image"], batch["label"]
  eval_logits = base.logits_fn(models, "target", params, batch_stats, train=False)
  reference = jax.lax.stop_gradient(eval_logits(x))
  x_adv = attacks.pgd(eval_logits, x, reference, keys, epsilon=cfg["epsilon"],
                      step_size=cfg["step_size"], num_steps=cfg["num_steps"], loss="kl",
                      init_std=cfg["init_std"])
  clean, adv, stats = base.clean_then_adversarial(models, params, batch_stats, x, x_adv)
  per_example = losses.trades_loss(clean, adv, y, beta=cfg["beta"])
  return base.robust_output(per_example, clean, adv, y, stats)
