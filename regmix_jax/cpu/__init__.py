"""CPU acceleration, kept apart from the core: the commands choose it from the top and pass it
down as a value; the models, attacks, methods and losses never import it.

- `choose(config.cpu_convolutions)` (`convolutions_for(config)`: with the run's
  `cpu_onednn_min_size`) -> `Convolutions`: `.conv` for a model's
  `conv_general_dilated` (`models.build_models(..., conv=...)`), `.accelerate(fn)` for a function
  the library did not build, `.describe()` for a run's output. Off CPU it is "plain": nothing of
  this package is traced.
- `accelerate(logits_fn)`: the one line that gives a user's model the commands' CPU speed
  (e.g. before `attacks.run_autoattack`).
- `configure_cpu_for(config)`: host devices and XLA:CPU flags, before JAX starts a backend.

Rooms: `fast_conv` (gradient rules for XLA:CPU), `onednn` (+ `csrc/`: oneDNN's convolutions via
an XLA FFI call), `rewrite` (rebinding a function's convolutions), `host` (devices, flags, CPU
features). What each buys, measured: docs/performance.md.
"""

from regmix_jax.cpu.convolutions import (CHOICES, Convolutions, accelerate, check_min_size, choose,
                                         convolutions_for)
from regmix_jax.cpu.host import configure_cpu_for

__all__ = ["CHOICES", "Convolutions", "accelerate", "check_min_size", "choose",
           "configure_cpu_for", "convolutions_for"]
