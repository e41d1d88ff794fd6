"""CIFAR-10, PreActResNet-18, N-FGSM (de Jorge et al. 2022), the released recipe
(pdejorge/N-FGSM@0a9e4f0 train.py; line numbers there; experiments.sh: --epsilon 8 --alpha 8
--unif 2):

- Wong et al.'s PreActResNet-18 (l.27, 160-161; architectures/preact_resnet.py), inputs
  normalised by the CIFAR-10 mean and std (l.88; utils/data_utils.py:16-17).
- Method (`methods/n_fgsm.py`): noise U(-2 eps, 2 eps) (l.51, 217-221), one step of alpha = eps
  = 8/255 (l.45, 50), no projection to the eps-ball (`--clip -1`, l.57, 231-233); train mode
  throughout, so the attack pass updates the BatchNorm running averages (l.173, 224).
- 30 epochs (l.36), batch 128 (l.34), SGD momentum 0.9, weight decay 5e-4 (l.40-41); PyTorch's
  CyclicLR from 0 to 0.2, `step_size_up = step_size_down = lr_steps / 2` (l.37-39, 177-184),
  stepped every iteration (l.248), momentum cycled 0.9 -> 0.8 -> 0.9 (its default).
"""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 30
  config.model.name = "preact_resnet18"
  config.model.normalize = "cifar10"
  config.method = methods.method_config("n_fgsm")
  config.optim.schedule = "cyclic"
  config.optim.learning_rate = 0.2
  config.optim.cyclic_peak_fraction = 0.5
  config.optim.cycle_momentum = True
  return config
