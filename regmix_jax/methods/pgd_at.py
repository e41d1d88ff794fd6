"""`pgd_at`: PGD adversarial training (Madry et al. 2018): CE on PGD-10 examples.

PGD-10, eps 8/255, step 2/255, uniform random start (docs/methods.md). The attack runs with batch
statistics (`attack_bn = "train"`, as the widely used Rice et al. code with `model.train()`), but
its passes do not update the BatchNorm running averages (PyTorch updates them on every attack
pass); `attack_bn = "eval"` uses the running averages instead.
"""

import functools

from regmix_jax import attacks
from regmix_jax.methods import base

NAME = "pgd_at"
DEFAULTS = {"epsilon": 8 / 255, "step_size": 2 / 255, "num_steps": 10, "attack_bn": "train"}
METRICS = base.SUPERVISED_METRICS
CHOICES = {"attack_bn": ("train", "eval")}


def loss(params, batch_stats, batch, keys, *, models, cfg, axis_name=None):
  del axis_name
  attack = functools.partial(attacks.pgd, epsilon=cfg["epsilon"], step_size=cfg["step_size"],
                             num_steps=cfg["num_steps"])
  return base.adversarial_ce(attack, params, batch_stats, batch, keys, models=models,
                             attack_bn=cfg["attack_bn"])
