"""Multi-process start-up: JAX's distributed runtime, from `config.distributed` or the
environment. Call before any JAX computation."""

from __future__ import annotations

import os

import jax


def initialize_distributed(config) -> bool:
  """Starts JAX's distributed runtime for a multi-process run (see `config.distributed`); returns
  whether it did. On CPU, cross-process collectives use gloo."""
  dist = config.distributed
  address = dist.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  if not (dist.enabled or address):
    return False
  num = dist.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", 0)) or None
  pid = dist.process_id if dist.process_id >= 0 else os.environ.get("JAX_PROCESS_ID")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=address or None, num_processes=num,
                             process_id=None if pid is None else int(pid))
  return True
