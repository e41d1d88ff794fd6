"""`n_fgsm`: N-FGSM (de Jorge et al. 2022): noise `U(-2 eps, 2 eps)`, one signed step of
`alpha = eps`, no projection to the eps-ball (only to [0, 1]), then CE. The perturbation can reach
`3 eps` in L-inf by design. The attack runs with batch statistics (`attack_bn="train"`, as the
released code's `model.train()`), without updating the running averages."""

import functools

from regmix_jax import attacks
from regmix_jax.methods import base

NAME = "n_fgsm"
DEFAULTS = {"epsilon": 8 / 255, "step_size": 8 / 255, "noise_radius": 16 / 255,
            "attack_bn": "train"}
METRICS = base.SUPERVISED_METRICS
CHOICES = {"attack_bn": ("train", "eval")}


def loss(params, batch_stats, batch, keys, *, models, cfg, axis_name=None):
  del axis_name
  attack = functools.partial(attacks.fgsm, epsilon=cfg["epsilon"], step_size=cfg["step_size"],
                             init_radius=cfg["noise_radius"], project_radius=float("inf"))
  return base.adversarial_ce(attack, params, batch_stats, batch, keys, models=models,
                             attack_bn=cfg["attack_bn"])
