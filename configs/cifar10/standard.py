"""CIFAR-10, ResNet-18, clean training (the non-robust reference point)."""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 100
  config.method = methods.method_config("standard")
  config.optim.milestones = (50, 75)
  return config
