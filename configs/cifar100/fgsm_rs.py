"""CIFAR-100, PreActResNet-18, FGSM-RS: the released CIFAR-10 recipe (configs/cifar10/fgsm_rs.py;
locuslab/fast_adversarial has no CIFAR-100 script) with 100 classes and the CIFAR-100 mean and
std as pdejorge/N-FGSM normalises CIFAR-100 (utils/data_utils.py:244-245). Our adaptation.
"""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 15
  config.data.name = "cifar100"
  config.model.name = "preact_resnet18"
  config.model.normalize = "cifar100"
  config.method = methods.method_config("fgsm_rs")
  config.optim.schedule = "cyclic"
  config.optim.learning_rate = 0.2
  config.optim.cyclic_peak_fraction = 0.5
  config.optim.cycle_momentum = True
  return config
