"""CIFAR-10, D2R + CAG (Liu et al. 2025), the released code's recipe: target WRN-34-10, guide the
LBGAT ResNet-18 (strides 1, 1, 2, 2), trained together from scratch by one SGD optimiser (momentum
0.9, weight decay 2e-4), batch 128, 100 epochs, lr 0.02 in epoch 1, 0.1 to epoch 75, 0.01 to 90,
0.001 to 100 (per iteration). CAG: eps 0.031, step 0.007, 10 steps. The target is evaluated;
add the guide with --config.eval.roles=target,guide. Smaller target: --config.model.name=resnet18.
"""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 100
  config.model.name = "wrn34_10"
  config.guide_model.name = "lbgat_resnet18"
  config.method = methods.method_config("d2r")
  config.optim.weight_decay = 2e-4
  config.optim.schedule = "piecewise"
  config.optim.boundaries = (1, 75, 90)
  config.optim.rates = (0.02, 0.1, 0.01, 0.001)
  return config
