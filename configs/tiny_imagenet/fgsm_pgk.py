"""Tiny ImageNet, PreActResNet-18 (64x64, 200 classes), FGSM-PGK: the released Tiny ImageNet
recipe. Label smoothing 0.8, lam 1, momentum decay 0.1, EMA threshold 0.9, buffers reset every 40
epochs, r = na / (n0 + 1); no augmentation; gradient-norm clipping 10; SGD lr 0.1, momentum 0.9,
weight decay 5e-4, 110 epochs, x0.1 at 100 and 105. The validation images are the test split.

  python -m regmix_jax.main --config=configs/tiny_imagenet/fgsm_pgk.py --workdir=runs/tin_pgk \
    --config.data.dir=/data/tiny-imagenet-200
"""

from regmix_jax import config as config_lib
from regmix_jax import methods
from regmix_jax.methods import fgsm_pgk


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 110
  config.data.source = "files"
  config.data.name = "tiny_imagenet"
  config.data.augment = False
  config.model.name = "preact_resnet18"
  config.method = methods.method_config("fgsm_pgk", **fgsm_pgk.MANY_CLASSES)
  config.optim.milestones = (100, 105)
  config.optim.grad_clip_norm = 10.0
  config.ema.enabled = True
  return config
