"""`fgsm_rs`: FGSM with a random start (Wong, Rice & Kolter 2020, "Fast is better than free").

`d ~ U(-eps, eps)`, one signed step of `step_size` (default 10/255 = 1.25 eps), projection to the
eps-ball and [0, 1], then `CE(f(x + d), y)`. Wong et al. compute the attack with the model in
train mode; `attack_bn = "train"` does that with batch statistics, but the attack pass does not
update the BatchNorm running averages (in PyTorch it updates them once more per step).
"""

import functools

from regmix_jax import attacks
from regmix_jax.methods import base

NAME = "fgsm_rs"
DEFAULTS = {"epsilon": 8 / 255, "step_size": 10 / 255, "attack_bn": "train"}
METRICS = base.SUPERVISED_METRICS
CHOICES = {"attack_bn": ("train", "eval")}


def loss(params, batch_stats, batch, keys, *, models, cfg, axis_name=None):
  del axis_name
  attack = functools.partial(attacks.fgsm, epsilon=cfg["epsilon"], step_size=cfg["step_size"],
                             random_start=True)
  return base.adversarial_ce(attack, params, batch_stats, batch, keys, models=models,
                             attack_bn=cfg["attack_bn"])
