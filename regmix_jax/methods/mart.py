"""`mart`: MART (Wang et al. 2020), misclassification-aware adversarial training.

`BCE(f(x'), y) + beta * KL(P(f(x)) || P(f(x'))) * (1 - P(f(x))_y)` (see `losses.mart_loss`). x' is
PGD-10 on cross-entropy (eps 8/255, step 2/255) from `x + 0.001 N(0, I)`, model in inference mode,
as the released code. Training passes: train mode on x, then on x'. beta = 6 (the WRN setting).
"""

from regmix_jax import attacks, losses
from regmix_jax.methods import base

NAME = "mart"
DEFAULTS = {"epsilon": 8 / 255, "step_size": 2 / 255, "num_steps": 10, "init_std": 0.001,
            "beta": 6.0}
METRICS = base.ROBUST_METRICS


def loss(params, batch_stats, batch, keys, *, models, cfg, axis_name=None):
  del axis_name
  x, y = batch["image"], batch["label"]
  eval_logits = base.logits_fn(models, "target", params, batch_stats, train=False)
  x_adv = attacks.pgd(eval_logits, x, y, keys, epsilon=cfg["epsilon"],
                      step_size=cfg["step_size"], num_steps=cfg["num_steps"],
                      init_std=cfg["init_std"])
  clean, adv, stats = base.clean_then_adversarial(models, params, batch_stats, x, x_adv)
  per_example = losses.mart_loss(clean, adv, y, beta=cfg["beta"])
  return base.robust_output(per_example, clean, adv, y, stats)
