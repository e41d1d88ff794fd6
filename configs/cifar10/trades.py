"""CIFAR-10, WRN-34-10, TRADES (Zhang et al. 2019), the released recipe
(yaodongyu/TRADES@6e8e11b train_trades_cifar10.py; line numbers there):

- WRN-34-10 (l.152; models/wideresnet.py and its initialisation), no normalisation, zero-pad 4
  crop and flip (l.59-66).
- Method (`methods/trades.py` DEFAULTS): beta 6 (l.36); the KL attack, eps 0.031, step 0.007, 10
  steps (l.30-35) from x + 0.001 N(0, I) in eval mode (trades.py:27-41).
- SGD lr 0.1 (l.24), momentum 0.9 (l.26), weight decay 2e-4 (l.22), batch 128 (l.16), 76 epochs
  (l.20). `adjust_learning_rate` (l.137-147), called with the 1-indexed epoch (l.155-157): x0.1
  from epoch >= 75, i.e. from the 0-indexed epoch 74 (its >= 90 and >= 100 drops never come in
  76 epochs).
ResNet-18 instead: --config.model.name=resnet18.
"""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 76
  config.model.name = "wrn34_10"
  config.method = methods.method_config("trades")
  config.optim.weight_decay = 2e-4
  config.optim.milestones = (74,)
  return config
