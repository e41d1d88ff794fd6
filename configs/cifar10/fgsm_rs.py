"""CIFAR-10, PreActResNet-18, FGSM-RS (Wong, Rice & Kolter 2020), the released recipe
(locuslab/fast_adversarial@54f7287 CIFAR10/train_fgsm.py; line numbers there):

- Wong et al.'s PreActResNet-18 (l.72; CIFAR10/preact_resnet.py), inputs normalised by the
  CIFAR-10 mean and std (utils.py:8-9, 27, 31: a fixed first layer here, `model.normalize`;
  eps and alpha stay in pixel units, as the released `epsilon / std`, l.68-69).
- Method (`methods/fgsm_rs.py`): eps 8/255 (l.30), alpha 10/255 (l.31), a uniform start in the
  eps-ball (l.105-110); the model stays in train mode, so the attack pass updates the BatchNorm
  running averages too (l.73, 112).
- 15 epochs (l.24), batch 128 (l.22), SGD momentum 0.9, weight decay 5e-4 (l.28-29); the rate
  is PyTorch's CyclicLR from 0 to 0.2 and back, `step_size_up = step_size_down = lr_steps / 2`
  (l.25-27, 85-88), stepped every iteration (l.129), with its default cycle_momentum: momentum
  0.9 -> 0.8 at the peak -> 0.9.
Not reproduced: apex mixed precision O2 (l.37-42, 76-79); we train in float32.
"""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 15
  config.model.name = "preact_resnet18"
  config.model.normalize = "cifar10"
  config.method = methods.method_config("fgsm_rs")
  config.optim.schedule = "cyclic"
  config.optim.learning_rate = 0.2
  config.optim.cyclic_peak_fraction = 0.5
  config.optim.cycle_momentum = True
  return config
