"""CIFAR-10, ResNet-18, RegMix FGSM-AGR (Liu & Ojha 2025): the FGSM-PGK recipe (configs/cifar10/
fgsm_pgk.py) with RegMix's regulariser and AGR target.

Our choices (the paper's values could not be read; docs/methods.md, "RegMix"): the weights amr_alpha,
amr_beta, agr_gamma are the registry defaults picked on a validation split of the CIFAR-10
subset (experiments/regmix_hparams/results.md); 95 epochs as the paper reports for RegMix (110 for
FGSM-PGK), with the rate x0.1 at epochs 85 and 90 (FGSM-PGK's last 10 and 5 epochs).
WRN-34-10: --config.model.name=wrn34_10.
"""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 95
  config.method = methods.method_config("fgsm_agr")
  config.optim.milestones = (85, 90)
  config.ema.enabled = True
  return config
