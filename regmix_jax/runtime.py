"""Process set-up before JAX starts a backend: host CPU devices and the distributed runtime.

Used by the training and evaluation commands; call these before any JAX computation.
"""

from __future__ import annotations

import os

from absl import logging


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
