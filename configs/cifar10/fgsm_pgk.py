"""CIFAR-10, ResNet-18, FGSM-PGK (Jia et al., TPAMI 2024), the released code's recipe.

eps = alpha = 8/255, label smoothing 0.5 (mass on the true class), lam 5.6 (logit MSE), momentum
decay 0.3, EMA threshold 0.82, buffers reset every 10 epochs; SGD lr 0.1, momentum 0.9, weight
decay 5e-4, batch 128, 110 epochs, lr x0.1 at epochs 100 and 105 (per iteration). The EMA teacher
(dynamic decay) is the model evaluated and saved. WRN-34-10: --config.model.name=wrn34_10.
"""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 110
  config.method = methods.method_config("fgsm_pgk")
  config.optim.milestones = (100, 105)
  config.ema.enabled = True
  return config
