"""CIFAR-100, ResNet-18, RegMix FGSM-AMR (Liu & Ojha 2025): the FGSM-PGK CIFAR-100 recipe
(configs/cifar100/fgsm_pgk.py, the released FGSM_PGK_CIFAR100.py's rules, its gated EMA teacher
included) with RegMix's regulariser; weights and schedule as configs/cifar10/fgsm_amr.py (our choices: RegMix's
code is not public, docs/methods.md, "RegMix").
"""

from regmix_jax import config as config_lib
from regmix_jax import methods
from regmix_jax.methods import fgsm_pgk


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 95
  config.data.name = "cifar100"
  config.method = methods.method_config("fgsm_amr", **fgsm_pgk.CIFAR100)
  config.optim.milestones = (85, 90)
  config.ema.enabled = True
  return config
