"""Command line: `python -m regmix_jax.main --config=configs/quickstart.py --workdir=DIR`.

Any config field can be overridden: `--config.num_epochs=5 --config.data.source=files`.
Also installed as the console script `regmix-train`.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs. A run "
                    "started again in the same workdir resumes from its latest checkpoint.")
flags.mark_flags_as_required(["config", "workdir"])


def cpu_device_count(config) -> int:
  """`config.cpu_devices`, or for 0 the largest count <= the number of cores that divides both
  batch sizes (so the default works on any machine)."""
  if config.cpu_devices > 0:
    return config.cpu_devices
  cores = os.cpu_count() or 1
  return max(d for d in range(1, cores + 1)
             if config.data.batch_size % d == 0 and config.data.eval_batch_size % d == 0)


def configure_cpu_devices(count: int) -> None:
  """Sets the number of host CPU devices before JAX starts a backend, so that data parallelism on
  a CPU-only machine uses every core. No effect on GPU/TPU devices."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as e:  # a backend already started (e.g. in an interactive session)
    logging.warning("Could not set %d CPU devices: %s", count, e)


def initialize_distributed(config) -> bool:
  """Starts JAX's distributed runtime for a multi-process run (see `config.distributed`); returns
  whether it did. Must run before any JAX computation. On CPU, cross-process collectives use
  gloo."""
  dist = config.distributed
  address = dist.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  if not (dist.enabled or address):
    return False
  import jax  # pylint: disable=g-import-not-at-top
  num = dist.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", 0)) or None
  pid = dist.process_id if dist.process_id >= 0 else os.environ.get("JAX_PROCESS_ID")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=address or None, num_processes=num,
                             process_id=None if pid is None else int(pid))
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:  # Orbax and JAX log every save at INFO: keep the console for progress
    logging.set_verbosity(logging.WARNING)
  config = FLAGS.config
  configure_cpu_devices(cpu_device_count(config))
  initialize_distributed(config)
  from regmix_jax import checkpointing, train  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(config, FLAGS.workdir)
  except (ValueError, TypeError, FileNotFoundError, FloatingPointError,
          checkpointing.CheckpointError) as e:
    if FLAGS.verbosity >= 1:  # --verbosity=1 shows the traceback
      raise
    sys.exit(f"regmix_jax: {type(e).__name__}: {e}")


def run():
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
