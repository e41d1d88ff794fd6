"""CIFAR-10, WRN-34-10, MART (Wang et al. 2020): beta 6, PGD-10 on CE (eps 8/255, step 2/255);
SGD lr 0.01, weight decay 3.5e-3, x0.1 at epochs 75 and 90, 90 epochs (released WRN script)."""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 90
  config.model.name = "wrn34_10"
  config.method = methods.method_config("mart")
  config.optim.learning_rate = 0.01
  config.optim.weight_decay = 3.5e-3
  config.optim.milestones = (75, 90)
  return config
