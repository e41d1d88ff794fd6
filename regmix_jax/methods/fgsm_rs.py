"""`fgsm_rs`: FGSM with a random start (Wong, Rice & Kolter 2020, "Fast is better than free"), as
the released code (locuslab/fast_adversarial@54f7287 CIFAR10/train_fgsm.py; docs/methods.md,
"FGSM-RS").

`d ~ U(-eps, eps)` clipped to the image box (l.105-110), one signed step of `step_size` (10/255,
l.31), clipped to the eps-ball (8/255, l.30) and the box (l.117-118), then `CE(f(x + d), y)`. The
model stays in train mode (l.73): the attack pass normalises with its batch's statistics and, as
PyTorch does, moves the BatchNorm running averages before the training pass (`attack_bn="train"`;
"eval" attacks the running averages and leaves them).
"""

import functools

from regmix_jax import attacks
from regmix_jax.methods import base

NAME = "fgsm_rs"
DEFAULTS = {"epsilon": 8 / 255, "step_size": 10 / 255, "attack_bn": "train"}
METRICS = base.SUPERVISED_METRICS
CHOICES = {"attack_bn": ("train", "eval")}
RANGES = {"epsilon": base.POSITIVE, "step_size": base.POSITIVE}


def loss(params, batch_stats, batch, keys, *, models, cfg, axis_name=None):
  del axis_name
  attack = functools.partial(attacks.fgsm, epsilon=cfg["epsilon"], step_size=cfg["step_size"],
                             random_start=True)
  return base.adversarial_ce(attack, params, batch_stats, batch, keys, models=models,
                             attack_bn=cfg["attack_bn"])
