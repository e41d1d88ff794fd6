"""CIFAR-100, D2R + CAG (Liu et al. 2025): the CIFAR-10 recipe (configs/cifar10/d2r.py) with 100
classes and a PreActResNet-18 target (Wong et al.'s), the paper's CIFAR-100 setting. The released
code (lusti-Yu/D2R@832b29f) has no CIFAR-100 model: its training script hard-codes a WRN-34-10
target (train_D2R_cifar100.py:245) and trains CIFAR-10 (l.99-102; the CIFAR-100 lines are
commented out, l.113-116). So the target's architecture here is our reading of the paper.
"""

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
