"""What several test files build: a tiny training config, and a watcher that SIGKILLs a process
once AutoAttack's state file records a number of finished attacks (a real kill, mid-evaluation).

Not a test module (no `test_` prefix); test files import it by name (pytest puts `tests/` on the
path)."""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from regmix_jax import config as config_lib
from regmix_jax import methods


def tiny_config(method: str = "fgsm_rs", **overrides):
  """A run of seconds: the small CNN (width 4) on synthetic 16x16 images, 128 training and 32
  test examples, batch 32, 2 epochs, constant rate, synchronous checkpoints. `overrides` are
  dotted field names (`**{"data.synthetic.image_size": 8}`), applied after the method's
  defaults."""
  config = config_lib.base_config()
  config.num_epochs = 2
  config.log_every_steps = 2
  config.data.source = "synthetic"
  config.data.synthetic.update(num_train=128, num_test=32, image_size=16)
  config.data.batch_size = 32
  config.data.eval_batch_size = 32
  config.model.name = "small_cnn"
  config.model.width = 4
  config.method = methods.method_config(method)
  config.optim.schedule = "constant"
  config.eval.attacks = "clean,pgd2"
  config.checkpoint.async_save = False
  for field, value in overrides.items():
    node = config
    *path, leaf = field.split(".")
    for name in path:
      node = node[name]
    node[leaf] = value
  return config


def tiny_fgsm_pgk_flags(*, cpu_devices: int, num_train: int, max_to_keep: int) -> list[str]:
  """Command-line overrides for a small, fast FGSM-PGK run on synthetic 16x16 images: 3 epochs
  of batch 32, a checkpoint every 2 steps, an evaluation (clean, PGD-2) every epoch, per-example
  buffers reset every 2 epochs (so they must survive a kill as well as the TrainState)."""
  return ["--config.num_epochs=3", f"--config.cpu_devices={cpu_devices}",
          "--config.log_every_steps=4", "--config.data.source=synthetic",
          "--config.model.name=small_cnn", f"--config.data.synthetic.num_train={num_train}",
          "--config.data.synthetic.num_test=64", "--config.data.synthetic.image_size=16",
          "--config.data.batch_size=32", "--config.data.eval_batch_size=32",
          "--config.model.width=4", "--config.eval.attacks=clean,pgd2",
          "--config.eval.every_epochs=1", "--config.checkpoint.every_steps=2",
          f"--config.checkpoint.max_to_keep={max_to_keep}", "--config.method.reset_every=2"]


def kill_after_attacks_source(state_glob: str, attacks: int = 2) -> str:
  """Python source that starts a daemon thread SIGKILLing its own process once a JSON state
  file matching `state_glob` (an expression evaluated in the child) lists `attacks` finished
  attacks (`run_attacks`). Prepend it to the child's code."""
  return f"""
import glob as _glob, json as _json, os as _os, signal as _signal, threading as _threading
import time as _time

def _kill_after_attacks(pattern):
  while True:
    for path in _glob.glob(pattern):
      try:
        with open(path) as f:
          if len(_json.load(f)["run_attacks"]) >= {attacks}:
            _os.kill(_os.getpid(), _signal.SIGKILL)
      except (OSError, ValueError):
        pass
    _time.sleep(0.005)

_threading.Thread(target=_kill_after_attacks, args=({state_glob},), daemon=True).start()
"""


def killable_env(env=None) -> dict[str, str]:
  """The environment for a process a test SIGKILLs: it reads the shared compilation cache
  (conftest.py) but writes nothing to it, since a kill during a write would leave a truncated
  entry for every later process to warn about."""
  return {**(os.environ if env is None else env),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1e9"}


def cifar_npz_config(tmp_path, **arrays) -> ml_collections.ConfigDict:
  """`config.data` reading a small CIFAR-10-shaped `.npz` written in `tmp_path` (20 train and 10
  test random images, labels `arange % 10`); `arrays` replace those (None removes one)."""
  r = np.random.default_rng(0)
  base = {"x_train": r.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
          "y_train": np.arange(20) % 10,
          "x_test": r.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
          "y_test": np.arange(10) % 10}
  base.update(arrays)
  path = tmp_path / "data.npz"
  np.savez(path, **{k: v for k, v in base.items() if v is not None})
  return ml_collections.ConfigDict(dict(source="files", name="cifar10", dir=str(path),
                                        download=False, val_size=0, seed=0))
