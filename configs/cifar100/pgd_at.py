"""CIFAR-100, ResNet-18, PGD-AT (Madry et al. 2018; the 200-epoch schedule of Rice et al. 2020).

PGD-10, eps 8/255, step 2/255; SGD lr 0.1, x0.1 at epochs 100 and 150, weight decay 5e-4.
"""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 200
  config.data.name = "cifar100"
  config.method = methods.method_config("pgd_at")
  config.optim.milestones = (100, 150)
  return config
