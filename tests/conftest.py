"""Test set-up: 4 forced CPU devices and cheap compiles, before any JAX backend starts."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_disable_most_optimizations", True)

import pytest  # noqa: E402

from regmix_jax import fast_conv  # noqa: E402


@pytest.fixture(autouse=True)
def _xla_convolutions_until_set():
  """`fast_conv.set_cpu_convolutions` is process-wide, and every trainer sets it from its config
  (default "auto": oneDNN's on a CPU with AVX-512 where installed; module-scoped fixtures build
  trainers too): each test starts from the import-time setting, XLA's, so tests of `fast_conv`
  itself (forward mode included) do not depend on which test ran before them in their worker."""
  fast_conv.set_cpu_convolutions("xla")
  yield
  fast_conv.set_cpu_convolutions("xla")
