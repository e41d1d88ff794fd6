"""CIFAR-10, WRN-34-10, MART (Wang et al. 2020), the released WideResNet recipe
(YisenWang/MART@2d83e17 train_wideresnet.py; line numbers there):

- WRN-34-10 (l.169; wideresnet.py: TRADES' network and initialisation), no normalisation, zero-pad
  4 crop and flip (l.70-77).
- Method (`methods/mart.py` DEFAULTS): beta 6 (l.41); PGD-10 on cross-entropy, eps 0.031, step
  0.007 (l.35-39) from x + 0.001 N(0, I), model in eval mode (mart.py:17-29).
- SGD lr 0.1 (l.29), momentum 0.9 (l.31), weight decay 7e-4 (l.27), batch 128 (l.21), 90 epochs
  (l.25). `adjust_learning_rate` (l.109-119), called with the 1-indexed epoch: x0.1 from epoch
  >= 75, x0.01 from >= 90, i.e. from the 0-indexed epochs 74 and 89.
(train_resnet.py, the ResNet-18 script, has other values: lr 0.01, weight decay 3.5e-3, 120
epochs, beta 5.)
"""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 90
  config.model.name = "wrn34_10"
  config.method = methods.method_config("mart")
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 7e-4
  config.optim.milestones = (74, 89)
  return config
