"""Quickstart: FGSM-RS on synthetic data with the small CNN; under 3 minutes on 2 CPU cores.

Needs no download. Prints clean and PGD-10 accuracy at the end (chance is 10%).
  python -m regmix_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
"""

from regmix_jax import config as config_lib
from regmix_jax import methods


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 6
  config.log_every_steps = 10
  config.data.source = "synthetic"
  config.data.name = "synthetic"
  config.data.synthetic.num_train = 4096
  config.data.synthetic.num_test = 1000
  config.data.batch_size = 128
  config.data.eval_batch_size = 500
  config.model.name = "small_cnn"
  config.model.width = 16
  config.method = methods.method_config("fgsm_rs")
  config.optim.schedule = "cyclic"  # Wong et al.'s one-cycle schedule, as configs/cifar10/fgsm_rs.py
  config.optim.cycle_momentum = True  # torch CyclicLR's default (fast_adversarial train_fgsm.py:86-88)
  config.optim.learning_rate = 0.2
  config.eval.attacks = "clean,pgd10"
  config.eval.num_examples = 0
  config.eval.every_epochs = 2
  return config
