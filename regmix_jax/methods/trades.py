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
  # The third train-mode pass on x (trades.py:82), for its running statistics.
  _, target_stats = base.apply_model(models, "target", jax.lax.stop_gradient(params), stats, x,
                                     train=True)
  per_example = losses.trades_loss(clean, adv, y, beta=cfg["beta"])
  return base.robust_output(per_example, clean, adv, y, {**stats, "target": target_stats})
