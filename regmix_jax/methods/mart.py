"""`mart`: MART (Wang et al. 2020), misclassification-aware adversarial training, as the
released code (YisenWang/MART@2d83e17 mart.py and train_wideresnet.py).

`BCE(f(x'), y) + beta * KL(P(f(x)) || P(f(x'))) * (1 - P(f(x))_y)` (`losses.mart_loss`,
mart.py:38-58). x' is PGD-10 on cross-entropy from `x + 0.001 N(0, I)` with the model in eval
mode (mart.py:17-29); training passes in train mode on x, then on x' (mart.py:32-40). Defaults
from train_wideresnet.py: eps 0.031 (l.35), 10 steps (l.37), step 0.007 (l.39), beta 6 (l.41).
"""

from regmix_jax import attacks, losses
from regmix_jax.methods import base

NAME = "mart"
DEFAULTS = {"epsilon": 0.031, "step_size": 0.007, "num_steps": 10, "init_std": 0.001,
            "beta": 6.0}
METRICS = base.ROBUST_METRICS
RANGES = {"epsilon": base.POSITIVE, "step_size": base.POSITIVE, "num_steps": (1, None),
          "init_std": base.NON_NEGATIVE, "beta": (0.0, None)}


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
