"""CIFAR-100, ResNet-18, FGSM-PGK (Jia et al., TPAMI 2024), the released CIFAR-100 recipe
(jiaxiaojunQAQ/FGSM-PGK@ef58b3c FGSM_PGK_CIFAR100.py): as configs/cifar10/fgsm_pgk.py except
(`methods/fgsm_pgk.py` CIFAR100, each cited there) label smoothing 0.8, lam 1, momentum decay 0.1,
EMA threshold 0.9, buffers reset every 40 epochs, r = na / (n0 + 1), and the EMA teacher moved
only on steps with r >= tau (l.338-348, inside the `else:`). 50,000 images, 391 steps per epoch
there with the last partial batch kept (l.156, 159); 390 full ones here. Milestones at epochs
100 and 105 (l.164, 169).
"""

from regmix_jax import config as config_lib
from regmix_jax import methods
from regmix_jax.methods import fgsm_pgk


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 110
  config.data.name = "cifar100"
  config.method = methods.method_config("fgsm_pgk", **fgsm_pgk.CIFAR100)
  config.optim.milestones = (100, 105)
  config.ema.enabled = True
  return config
