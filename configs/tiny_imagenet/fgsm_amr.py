"""Tiny ImageNet, FGSM-PGK's PreActResNet-18, RegMix FGSM-AMR: the FGSM-PGK Tiny ImageNet recipe
(configs/tiny_imagenet/fgsm_pgk.py: its model, no augmentation, gradient-norm clipping 10) with
RegMix's regulariser; weights and schedule as configs/cifar10/fgsm_amr.py (our choices).

  python -m regmix_jax.main --config=configs/tiny_imagenet/fgsm_amr.py --workdir=runs/tin_amr \
    --config.data.dir=/data/tiny-imagenet-200
"""

from regmix_jax import config as config_lib
from regmix_jax import methods
from regmix_jax.methods import fgsm_pgk


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 95
  config.data.source = "files"
  config.data.name = "tiny_imagenet"
  config.data.augment = False
  config.model.name = "preact_resnet18_fgsm_pgk"
  config.method = methods.method_config("fgsm_amr", **fgsm_pgk.TINY_IMAGENET)
  config.optim.milestones = (85, 90)
  config.optim.grad_clip_norm = 10.0
  config.ema.enabled = True
  return config
