"""CIFAR-100, D2R + CAG (Liu et al. 2025): as configs/cifar10/d2r.py with a PreActResNet-18
target (the paper's CIFAR-100 setting) and the LBGAT ResNet-18 guide."""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 100
  config.data.name = "cifar100"
  config.model.name = "preact_resnet18"
  config.guide_model.name = "lbgat_resnet18"
  config.method = methods.method_config("d2r")
  config.optim.weight_decay = 2e-4
  config.optim.schedule = "piecewise"
  config.optim.boundaries = (1, 75, 90)
  config.optim.rates = (0.02, 0.1, 0.01, 0.001)
  return config
