"""CIFAR-10, PreActResNet-18, PGD-AT (Madry et al. 2018) as Rice, Wong & Kolter 2020 run it
(locuslab/robust_overfitting@c47a25c train_cifar.py; line numbers there):

- Rice et al.'s PreActResNet-18 (l.128, 208-209; preactresnet.py: the shortcut from BN-ReLU(x)),
  inputs normalised by the CIFAR-10 mean and std inside every call (l.20-24; utils.py:17-18).
- Augmentation: reflect-pad 4 (utils.py:26-27), random crop, horizontal flip (l.183, 197-200).
- Method (`methods/pgd_at.py`): PGD-10, eps 8/255, step 2/255, one uniform restart
  (l.139-142, 70-123); train mode, so every attack pass, the restart-loss pass (l.120), the
  training pass and the logging pass after the update (l.339) move the BatchNorm running
  averages.
- 200 epochs (l.133), batch 128 (l.131), SGD lr 0.1, momentum 0.9, weight decay 5e-4 (l.135,
  230); the rate from `lr_schedule(epoch + (i + 1) / len(loader))` set before each step
  (l.248-255, 308-309): 0.1 to half the run, 0.01 to three quarters, 0.001 after, each drop one
  iteration before the epoch boundary (`optim.schedule_at_step_end`).
Not reproduced: the best-on-test checkpoint (l.353-449); we report the final model.
"""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 200
  config.model.name = "preact_resnet18_rice"
  config.model.normalize = "cifar10"
  config.data.pad_mode = "reflect"
  config.method = methods.method_config("pgd_at")
  config.optim.milestones = (100, 150)
  config.optim.schedule_at_step_end = True
  return config
