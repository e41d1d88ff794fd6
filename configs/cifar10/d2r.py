"""CIFAR-10, D2R + CAG (Liu et al. 2025), the released recipe (lusti-Yu/D2R@832b29f
D2R/train_D2R_cifar100.py, which trains CIFAR-10 despite its name, l.99-102; line numbers there):

- Target WRN-34-10 (l.245, hard-coded; models/wideresnet.py), guide `ResNet18_cifar` (the LBGAT
  ResNet-18: strides 1, 1, 2, 2, models/resnetcifar.py; the script takes it from its required
  `-teacher_model` flag, l.66, 248), both from scratch, both with their references'
  initialisation; no normalisation, zero-pad 4 crop and flip (l.89-96).
- One SGD optimiser over both models: lr 0.1, momentum 0.9, weight decay 2e-4 (l.40-45, 256),
  batch 128 (l.34), 100 epochs (l.38). `adjust_learning_rate` (l.186-198), called with the
  1-indexed epoch (l.258): 0.02 in epoch 1, 0.1 to 75, 0.01 from 76, 0.001 from 91, i.e.
  boundaries at the 0-indexed epochs 1, 75 and 90.
- Method (`methods/d2r.py`): CAG with eps 0.031, step 0.007, 10 steps (l.48-53).
The target is evaluated; add the guide with --config.eval.roles=target,guide. Smaller target:
--config.model.name=resnet18.
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
