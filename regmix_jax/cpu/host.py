"""Host set-up for CPU runs, before JAX starts a backend: how many host devices, which XLA:CPU
flags, and what the CPU can do.

The commands call `configure_cpu_for(config)` first; on GPU and TPU what it sets has no effect.
Importing this module starts no backend. An XLA flag is set only where the installed jaxlib knows
it (`xla_accepts`): XLA ends the process on a flag it does not know, and the experimental ones
come and go between releases.
"""

from __future__ import annotations

import functools
import mmap
import os
import pathlib
import re

import jax
import jaxlib
from absl import logging


def _cpuinfo(field: str) -> str:
  """The value of the first `field` line of /proc/cpuinfo; "" where there is none or the file
  cannot be read (not Linux: nothing is assumed)."""
  try:
    with open("/proc/cpuinfo") as f:
      return next((line.split(":", 1)[1].strip() for line in f
                   if ":" in line and line.split(":", 1)[0].strip() == field), "")
  except OSError:
    return ""


def cpu_flags() -> frozenset[str]:
  """The CPU's feature flags as Linux names them (/proc/cpuinfo); empty where that cannot be read."""
  return frozenset(_cpuinfo("flags").split())


def cpu_vendor() -> str:
  """The CPU's vendor as /proc/cpuinfo names it ("GenuineIntel", "AuthenticAMD"), or ""."""
  return _cpuinfo("vendor_id")


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


def _jaxlib_libraries() -> list[pathlib.Path]:
  """jaxlib's large native libraries, where XLA's flag names live."""
  if not getattr(jaxlib, "__file__", None):
    return []
  root = pathlib.Path(jaxlib.__file__).parent
  return sorted(p for p in root.rglob("*") if p.suffix in (".so", ".dylib", ".pyd")
                and p.is_file() and p.stat().st_size > (16 << 20))


@functools.cache
def xla_accepts(flag: str) -> bool:
  """Whether the installed jaxlib knows the XLA flag `flag` ("--xla_..."): its name is in jaxlib's
  native code as a string of its own (NUL-terminated, not the end or the start of a longer
  name), as XLA registers every flag it parses (under a second, once per process). False where
  no library is found (an unfamiliar jaxlib layout): then nothing is set, with a warning."""
  name = flag.lstrip("-").split("=", 1)[0].encode()
  for path in _jaxlib_libraries():
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
      at = data.find(name + b"\0")
      while at >= 0:
        if at == 0 or not _NAME_BYTE.match(data[at - 1:at]):
          return True
        at = data.find(name + b"\0", at + 1)
  return False


_NAME_BYTE = re.compile(rb"[A-Za-z0-9_]")


def with_flag(xla_flags: str, flag: str, value) -> str:
  """`xla_flags` (an XLA_FLAGS string) with `flag` set to `value`, unless it already sets that
  flag (the user's wins), or the installed jaxlib does not know it (`xla_accepts`: then a
  warning names it, and XLA keeps its own default)."""
  if flag in xla_flags:
    return xla_flags
  if not xla_accepts(flag):
    logging.warning("XLA flag %s is unknown to the installed jaxlib %s: not set (XLA keeps its "
                    "own default).", flag, jaxlib.__version__)
    return xla_flags
  return f"{xla_flags} {flag}={value}".strip()


def with_collective_timeout(xla_flags: str, seconds: int) -> str:
  """`xla_flags` with COLLECTIVE_TIMEOUT_FLAG set to `seconds` (`with_flag`)."""
  return with_flag(xla_flags, COLLECTIVE_TIMEOUT_FLAG, int(seconds))


def with_ynn_fusion_type(xla_flags: str, ynn_fusion_type: str) -> str:
  """`xla_flags` with YNN_FLAG set to `ynn_fusion_type` (`with_flag`); "default" sets nothing."""
  if ynn_fusion_type == "default":
    return xla_flags
  return with_flag(xla_flags, YNN_FLAG, ynn_fusion_type)


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


def configure_cpu_for(config) -> None:
  """`configure_cpu_devices` as `config` asks (`cpu_devices`, `cpu_ynn_fusion_type`,
  `cpu_collective_timeout_s`): what the training and evaluation commands run first."""
  configure_cpu_devices(cpu_device_count(config), config.cpu_ynn_fusion_type,
                        config.cpu_collective_timeout_s)
