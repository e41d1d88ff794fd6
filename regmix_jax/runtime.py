"""Process set-up before JAX starts a backend: host CPU devices and the distributed runtime.

Used by the training and evaluation commands; call these before any JAX computation. Importing
JAX starts no backend, so importing this module (or any other of the package) is safe before.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import logging


def quiet_console(flag_values) -> None:
  """What the command-line entry points call first, so that a command's progress and its one-line
  errors are not buried (a library import changes neither): absl shows warnings and errors only,
  unless the command line set `--verbosity` (Orbax and JAX log every checkpoint read and save at
  INFO); and `sys.unraisablehook` drops the echoes of a restore that failed (a checkpoint of
  another config, or a damaged one), which Orbax 0.12.8 leaves by the dozen, 50-700 lines, after
  the error has been raised and reported: `RuntimeError("Event loop is closed")` from
  tensorstore's threads, and its array-read coroutines' `Encountered error while reading array
  index` when they are collected (`_is_restore_echo`). Any other unraisable exception goes to the
  hook that was there."""
  if not flag_values["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_restore_echo(unraisable):
      previous(unraisable)
  sys.unraisablehook = hook


def _is_restore_echo(unraisable) -> bool:
  """Whether an unraisable exception (`sys.UnraisableHookArgs`) is one that Orbax's array reads
  leave behind after a failed restore (`quiet_console`); saves never match."""
  error = unraisable.exc_value
  if (unraisable.object is None and isinstance(error, RuntimeError)
      and str(error) == "Event loop is closed"):
    return True
  code = getattr(unraisable.object, "cr_code", None)  # a coroutine's
  return (code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
          and str(error).startswith("Encountered error while reading array index"))


def cpu_flags() -> frozenset[str]:
  """The CPU's feature flags as Linux names them (/proc/cpuinfo); empty where that cannot be read
  (not Linux: nothing is assumed)."""
  try:
    with open("/proc/cpuinfo") as f:
      return frozenset(next((line.split(":", 1)[1].split() for line in f
                             if line.startswith("flags")), []))
  except OSError:
    return frozenset()


def cpu_device_count(config) -> int:
  """`config.cpu_devices`, or for 0 the largest count <= the number of cores that divides both
  batch sizes (so the default works on any machine)."""
  if config.cpu_devices > 0:
    return config.cpu_devices
  cores = os.cpu_count() or 1
  return max(d for d in range(1, cores + 1)
             if config.data.batch_size % d == 0 and config.data.eval_batch_size % d == 0)


# XLA:CPU ends the whole process (SIGABRT) when devices wait at a collective's rendezvous for a
# late one longer than its stuck-warning time (20 s) plus this many seconds (default 40 in jaxlib
# 0.10.2): on a busy CPU a slow host device can lag that much. `configure_cpu_devices` raises it
# to `config.cpu_collective_timeout_s` unless XLA_FLAGS sets it.
COLLECTIVE_TIMEOUT_FLAG = "--xla_cpu_collective_call_terminate_timeout_seconds"

# XLA:CPU's YNNPACK fusion kinds (`--xla_cpu_experimental_ynn_fusion_type`, jaxlib 0.10.2).
YNN_FUSION_TYPES = ("individual_convolution", "individual_dot", "eltwise", "reduce", "dot")
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def check_ynn_fusion_type(value: str) -> None:
  """Raises ValueError unless `value` is "default" or a comma-separated subset of
  YNN_FUSION_TYPES (XLA itself would end the process on an unknown kind)."""
  if value == "default":
    return
  unknown = [t for t in value.split(",") if t not in YNN_FUSION_TYPES]
  if not value or unknown:
    raise ValueError(f"Config field `cpu_ynn_fusion_type`: {value!r} is not 'default' or a "
                     f"comma-separated list of {', '.join(YNN_FUSION_TYPES)}")


def configure_cpu_devices(count: int, ynn_fusion_type: str,
                          collective_timeout_s: int = 600) -> None:
  """Before JAX starts a backend: sets the number of host CPU devices, so that data parallelism
  on a CPU-only machine uses every core, which operations XLA:CPU hands to YNNPACK
  (`ynn_fusion_type`, see `config.cpu_ynn_fusion_type`; "default" leaves XLA's choice), and how
  long a host device may wait for the others at a collective before XLA ends the process
  (`collective_timeout_s`, `COLLECTIVE_TIMEOUT_FLAG`). Flags already in XLA_FLAGS win. No effect
  on GPU/TPU."""
  check_ynn_fusion_type(ynn_fusion_type)
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as e:  # a backend already started (e.g. in an interactive session)
    logging.warning("Could not set %d CPU devices or XLA:CPU flags: %s", count, e)
    return
  flags = with_ynn_fusion_type(os.environ.get("XLA_FLAGS", ""), ynn_fusion_type)
  os.environ["XLA_FLAGS"] = with_collective_timeout(flags, collective_timeout_s)


def with_collective_timeout(xla_flags: str, seconds: int) -> str:
  """`xla_flags` with COLLECTIVE_TIMEOUT_FLAG set to `seconds`, unless it already sets it."""
  if COLLECTIVE_TIMEOUT_FLAG in xla_flags:
    return xla_flags
  return f"{xla_flags} {COLLECTIVE_TIMEOUT_FLAG}={int(seconds)}".strip()


def configure_cpu_for(config) -> None:
  """`configure_cpu_devices` as `config` asks (`cpu_devices`, `cpu_ynn_fusion_type`,
  `cpu_collective_timeout_s`): what the training and evaluation commands run first."""
  configure_cpu_devices(cpu_device_count(config), config.cpu_ynn_fusion_type,
                        config.cpu_collective_timeout_s)


def with_ynn_fusion_type(xla_flags: str, ynn_fusion_type: str) -> str:
  """`xla_flags` (an XLA_FLAGS string) with YNN_FLAG set to `ynn_fusion_type`, unless it already
  sets that flag or `ynn_fusion_type` is "default"."""
  if ynn_fusion_type == "default" or YNN_FLAG in xla_flags:
    return xla_flags
  return f"{xla_flags} {YNN_FLAG}={ynn_fusion_type}".strip()


def initialize_distributed(config) -> bool:
  """Starts JAX's distributed runtime for a multi-process run (see `config.distributed`); returns
  whether it did. Must run before any JAX computation. On CPU, cross-process collectives use
  gloo."""
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
