"""CIFAR-10, ResNet-18, FGSM-RS (Wong et al. 2020): alpha 10/255, cyclic rate to 0.2, 30 epochs."""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 30
  config.method = methods.method_config("fgsm_rs")
  config.optim.schedule = "cyclic"
  config.optim.learning_rate = 0.2
  return config
