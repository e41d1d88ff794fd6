"""CIFAR-10, PreActResNet-18, N-FGSM (de Jorge et al. 2022): noise U(-16/255, 16/255), one step of
8/255, no eps-ball projection; cyclic learning rate to 0.2 over 30 epochs, weight decay 5e-4."""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 30
  config.model.name = "preact_resnet18"
  config.method = methods.method_config("n_fgsm")
  config.optim.schedule = "cyclic"
  config.optim.learning_rate = 0.2
  return config
