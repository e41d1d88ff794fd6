"""CIFAR-100, PreActResNet-18, PGD-AT as Rice, Wong & Kolter 2020 run it
(locuslab/robust_overfitting@c47a25c train_cifar100.py): as configs/cifar10/pgd_at.py except the
CIFAR-100 mean and std (l.20-27; ours agree with its 16-digit values to 1e-4), zero-padded crop,
flip and a random rotation of up to 15 degrees (l.160-164: torchvision RandomCrop(32, padding=4),
RandomHorizontalFlip, RandomRotation(15)), and 100 classes.
"""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 200
  config.data.name = "cifar100"
  config.data.rotate_degrees = 15.0
  config.model.name = "preact_resnet18_rice"
  config.model.normalize = "cifar100"
  config.method = methods.method_config("pgd_at")
  config.optim.milestones = (100, 150)
  config.optim.schedule_at_step_end = True
  return config
