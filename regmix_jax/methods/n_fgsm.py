"""`n_fgsm`: N-FGSM (de Jorge et al. 2022), as the released code (pdejorge/N-FGSM@0a9e4f0 train.py;
docs/methods.md, "N-FGSM").

Noise `U(-2 eps, 2 eps)` clipped to the image box (`--unif 2`, l.217-221), one signed step of
`alpha = eps` (l.50), no projection to the eps-ball (`--clip -1`, l.231-233; only the box), then
CE. The perturbation can reach `3 eps` in L-inf by design. The model stays in train mode (l.173):
the attack pass moves the BatchNorm running averages too (`attack_bn="train"`).
"""

import functools

from regmix_jax import attacks
from regmix_jax.methods import base

NAME = "n_fgsm"
DEFAULTS = {"epsilon": 8 / 255, "step_size": 8 / 255, "noise_radius": 16 / 255,
            "attack_bn": "train"}
METRICS = base.SUPERVISED_METRICS
CHOICES = {"attack_bn": ("train", "eval")}
RANGES = {"epsilon": base.POSITIVE, "step_size": base.POSITIVE,
          "noise_radius": base.NON_NEGATIVE}  # 0: FGSM from x, no noise (the paper's k = 0)


def loss(params, batch_stats, batch, keys, *, models, cfg, axis_name=None):
  del axis_name
  attack = functools.partial(attacks.fgsm, epsilon=cfg["epsilon"], step_size=cfg["step_size"],
                             init_radius=cfg["noise_radius"], project_radius=float("inf"))
  return base.adversarial_ce(attack, params, batch_stats, batch, keys, models=models,
                             attack_bn=cfg["attack_bn"])
