"""CIFAR-10, ResNet-18, clean training (the non-robust reference point; ours, no released recipe):
100 epochs, SGD lr 0.1 x0.1 at epochs 50 and 75, weight decay 5e-4, crop and flip."""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 100
  config.method = methods.method_config("standard")
  config.optim.milestones = (50, 75)
  return config
