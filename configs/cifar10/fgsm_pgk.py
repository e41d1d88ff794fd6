"""CIFAR-10, ResNet-18, FGSM-PGK (Jia et al., TPAMI 2024), the released recipe
(jiaxiaojunQAQ/FGSM-PGK@ef58b3c FGSM_PGK_CIFAR10.py; line numbers there):

- ResNet-18, kuangliu's CIFAR variant (l.31, 146-147), PyTorch's default initialisation; no
  input normalisation (utils.py:19-20: mean 0, std 1).
- Method (`methods/fgsm_pgk.py` DEFAULTS, each cited there): eps = alpha = 8/255, label
  smoothing 0.5, lam 5.6, momentum decay 0.3, EMA threshold 0.82, buffers reset every 10 epochs.
- SGD lr 0.1, momentum 0.9, weight decay 5e-4 (l.28-30, 156), batch 128 (l.22), 110 epochs
  (l.24); MultiStepLR per iteration with milestones at the starts of epochs 100 and 105
  (l.167, 172-173, 337).
- Augmentation: zero-pad 4, random crop, horizontal flip (utils.py:64-68, l.191-209).
- The EMA teacher, moved every step (l.347-348), is the model evaluated and saved.
Not reproduced (docs/methods.md, "FGSM-PGK"): 49,000 images per epoch in 383 steps (l.159, 256)
where we use all 50,000 in 390; the best-on-test teacher (l.387-389), where we report the final
one (and, with --config.checkpoint.keep_best, the best on a validation split).
WRN-34-10: --config.model.name=wrn34_10.
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
