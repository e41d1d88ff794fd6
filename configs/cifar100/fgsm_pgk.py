"""CIFAR-100, ResNet-18, FGSM-PGK (Jia et al., TPAMI 2024), the released CIFAR-100 recipe.

As CIFAR-10 except: label smoothing 0.8, lam 1, momentum decay 0.1, EMA threshold 0.9, buffers
reset every 40 epochs, and the success ratio r = na / (n0 + 1).
"""

from regmix_jax import config as config_lib
from regmix_jax import methods
from regmix_jax.methods import fgsm_pgk


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 110
  config.data.name = "cifar100"
  config.method = methods.method_config("fgsm_pgk", **fgsm_pgk.MANY_CLASSES)
  config.optim.milestones = (100, 105)
  config.ema.enabled = True
  return config
