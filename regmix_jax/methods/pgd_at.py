"""`pgd_at`: PGD adversarial training (Madry et al. 2018), as Rice, Wong & Kolter 2020 run it
(locuslab/robust_overfitting@c47a25c train_cifar.py; docs/methods.md, "PGD-AT").

CE on PGD-10 examples: a uniform start in the eps-ball clipped to [0, 1], 10 signed steps of
2/255 within 8/255, one restart, no early stop in training (train_cifar.py:70-123, 139-142). The
model stays in train mode throughout (l.294), so, as in PyTorch, BatchNorm normalises every pass
with its batch's statistics and every pass moves the running averages: the 10 attack passes
(l.90), the restart bookkeeping pass on x + delta (l.120), the training pass (l.315) and, after
the optimiser step, the logging pass on x (l.339; `post_update`). `extra_bn_passes=False` drops
the two passes that only move the running averages; `attack_bn="eval"` attacks the running
averages instead, leaving them.
"""

import functools

import jax

from regmix_jax import attacks
from regmix_jax.methods import base

NAME = "pgd_at"
DEFAULTS = {"epsilon": 8 / 255,  # train_cifar.py:139 (`--epsilon 8`, / 255 and / std, l.215-216)
            "step_size": 2 / 255,  # :140 (`--pgd-alpha 2`)
            "num_steps": 10,  # :141 (`--attack-iters 10`)
            "attack_bn": "train",  # :294 (`model.train()`)
            "extra_bn_passes": True}  # :120 and :339
METRICS = base.SUPERVISED_METRICS
CHOICES = {"attack_bn": ("train", "eval")}
RANGES = {"epsilon": base.POSITIVE, "step_size": base.POSITIVE, "num_steps": (1, None)}


def loss(params, batch_stats, batch, keys, *, models, cfg, axis_name=None):
  del axis_name
  x, y = batch["image"], batch["label"]
  attack = functools.partial(attacks.pgd, epsilon=cfg["epsilon"], step_size=cfg["step_size"],
                             num_steps=cfg["num_steps"])
  if cfg["attack_bn"] != "train":
    return base.adversarial_ce(attack, params, batch_stats, batch, keys, models=models,
                               attack_bn=cfg["attack_bn"])
  x_adv, batch_stats = base.train_mode_attack(attack, params, batch_stats, batch, keys,
                                              models=models)
  if cfg["extra_bn_passes"]:  # `all_loss = F.cross_entropy(model(normalize(X + delta)), ...)`
    _, batch_stats = base.train_mode_pass(models, "target", params)(x_adv, batch_stats)
  return base.supervised_ce(models, params, batch_stats, x_adv, y)


def post_update(params, batch_stats, batch, *, models, cfg):
  """After the optimiser step: `output = model(normalize(X))` in train mode (train_cifar.py:339,
  for the logged accuracy), which moves the running averages once more with the new weights."""
  if cfg["attack_bn"] != "train" or not cfg["extra_bn_passes"]:
    return batch_stats
  _, batch_stats = base.train_mode_pass(models, "target", jax.lax.stop_gradient(params))(
      batch["image"], batch_stats)
  return batch_stats
