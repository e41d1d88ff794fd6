"""Marks for tests that assert a flaw of one jaxlib's XLA:CPU (what the CPU plug-in works around):
they run only on the jaxlib they describe and the CPU backend, and skip elsewhere saying why."""

import jax
import jaxlib
import pytest

# The jaxlib whose XLA:CPU the flaws were found in (setup.cfg pins jax to this series).
FLAWS_SEEN_IN = "0.10."

xla_cpu_flaw = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not jaxlib.__version__.startswith(FLAWS_SEEN_IN),
    reason=f"asserts a flaw of XLA:CPU in jaxlib {FLAWS_SEEN_IN}x (here: jaxlib "
           f"{jaxlib.__version__} on {jax.default_backend()}); it may be gone elsewhere")
