"""CIFAR-10, WRN-34-10, TRADES (Zhang et al. 2019): beta 6, PGD-10 on the KL (eps 0.031, step
0.007); SGD lr 0.1, weight decay 2e-4, x0.1 at epochs 75 and 90, 100 epochs (released code).
ResNet-18 instead: --config.model.name=resnet18."""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 100
  config.model.name = "wrn34_10"
  config.method = methods.method_config("trades")
  config.optim.weight_decay = 2e-4
  config.optim.milestones = (75, 90)
  return config
