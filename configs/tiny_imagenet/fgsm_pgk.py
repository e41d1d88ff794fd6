"""Tiny ImageNet (64x64, 200 classes), FGSM-PGK: the released Tiny ImageNet recipe
(jiaxiaojunQAQ/FGSM-PGK@ef58b3c FGSM_PGK_TinyImageNet.py; line numbers there):

- FGSM-PGK's own PreActResNet-18 (`--model PreActResNest18`, l.28, 145-146 ->
  ImageNet_models/preact_resnet.py): shortcut from BN-ReLU(x), no final BN-ReLU, a
  Linear(2048, 200) head on the 2x2 pooled map (`preact_resnet18_fgsm_pgk`).
- Method (`methods/fgsm_pgk.py` TINY_IMAGENET): label smoothing 0.8, lam 1, momentum decay 0.1,
  EMA threshold 0.9, buffers reset every 40 epochs, r = na / (n0 + 1); the teacher moves every
  step (l.328-329).
- No augmentation (l.131; utils02.py:112-128); gradient-norm clipping 10 (l.309); SGD lr 0.1,
  momentum 0.9, weight decay 5e-4, 110 epochs, MultiStepLR at the starts of epochs 100 and 105
  (l.164, 169). The labelled validation images are the test split.
Not reproduced: 782 steps per epoch with a partial last batch (l.156, 159), here 781 full ones;
the best-on-validation teacher, here the final one (or --config.checkpoint.keep_best).

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
  config.model.name = "preact_resnet18_fgsm_pgk"
  config.method = methods.method_config("fgsm_pgk", **fgsm_pgk.TINY_IMAGENET)
  config.optim.milestones = (100, 105)
  config.optim.grad_clip_norm = 10.0
  config.ema.enabled = True
  return config
