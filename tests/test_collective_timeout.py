"""The guard against XLA:CPU's rendezvous abort: a host device that reaches a collective late
(a busy CPU, data-dependent work) must not end the process. XLA ends it (SIGABRT, "Termination
timeout ... exceeded") when the devices already there have waited the stuck-warning time (20 s)
plus the termination timeout (40 s by default): 60 s in all. The commands raise the latter to
`config.cpu_collective_timeout_s` (600 s). Checked for real: one of 4 devices sleeps in a host
callback before a psum."""

import os
import subprocess
import sys

import pytest

from regmix_jax import config as config_lib
from regmix_jax.cpu import host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_LAGGING_PSUM = r"""
import sys, time
import jax, jax.numpy as jnp
from jax.experimental import io_callback
from regmix_jax import config as config_lib, cpu
config = config_lib.base_config()
config.cpu_devices = 4
config.cpu_collective_timeout_s = int(sys.argv[2])
cpu.configure_cpu_for(config)
lag = float(sys.argv[1])

def late(i):  # device 1 arrives `lag` seconds after the others
  if int(i) == 1:
    time.sleep(lag)
  return i

def f(x):
  i = io_callback(late, jax.ShapeDtypeStruct((), jnp.int32), jax.lax.axis_index("d"))
  return jax.lax.psum(x + i, "d")

print("psum", jax.pmap(f, axis_name="d")(jnp.ones(4)).tolist(), flush=True)
"""


def _lagging_psum(lag, timeout_s, xla_flags=""):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  if xla_flags:
    env["XLA_FLAGS"] = xla_flags
  return subprocess.run([sys.executable, "-c", _LAGGING_PSUM, str(lag), str(timeout_s)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_device_late_by_more_than_xla_default_timeout_does_not_end_the_run():
  # The stuck warning at 1 s (XLA's default 20 s only lengthens the test): with XLA's default
  # termination timeout (40 s) a device 45 s late would end the process; with the library's
  # setting the run goes on.
  assert config_lib.base_config().cpu_collective_timeout_s >= 600
  result = _lagging_psum(45, config_lib.base_config().cpu_collective_timeout_s,
                         "--xla_cpu_collective_call_warn_stuck_timeout_seconds=1")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "psum [10.0, 10.0, 10.0, 10.0]" in result.stdout  # sum over devices of 1 + index
  assert "may be stuck" in result.stderr  # XLA noticed the wait, and let it finish


def test_the_timeout_setting_is_what_governs_the_abort():
  # The same program with the stuck warning at 1 s and the library's timeout at 1 s: XLA ends
  # the process after 2 s of waiting, before the late device arrives.
  result = _lagging_psum(5, 1, "--xla_cpu_collective_call_warn_stuck_timeout_seconds=1")
  assert result.returncode == -6, (result.returncode, result.stderr[-2000:])  # SIGABRT
  assert "Termination timeout" in result.stderr


def test_xla_flags_set_by_the_user_win():
  flag = host.COLLECTIVE_TIMEOUT_FLAG
  assert host.with_collective_timeout("", 600) == f"{flag}=600"
  assert host.with_collective_timeout(f"--a=1 {flag}=5", 600) == f"--a=1 {flag}=5"
