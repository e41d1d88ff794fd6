"""Where AutoAttack's time goes, one level down: one APGD-CE iteration inside `run_autoattack`
against a bare jitted forward-backward of the same model on the same points, for about 16, 64 and
256 points (the correctly classified among the first 2n), XLA's compile time taken out
(jax.monitoring's compile events).

  python experiments/autoattack_iteration_cost.py --workdir=/path/to/small_cnn_run

Weights and points as experiments/autoattack_benchmark.py loads them (a small_cnn run's
checkpoint; the CIFAR-10 subset's test images). Results: experiments/results/autoattack_speed.md
("One APGD iteration").
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from regmix_jax import runtime

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a small_cnn run (autoattack_benchmark's)")
  args = p.parse_args()
  runtime.configure_cpu_devices(os.cpu_count() or 1, "reduce")  # before JAX starts a backend
  # pylint: disable=g-import-not-at-top  (after the CPU set-up above)
  import jax
  import jax.numpy as jnp
  import numpy as np
  import autoattack_benchmark as benchmark
  from regmix_jax import attacks, models
  # pylint: enable=g-import-not-at-top
  model_cfg, variables = benchmark.load_variables(args.workdir)
  net = models.get_model(model_cfg["name"], 10, width=model_cfg["width"])
  logits_fn = lambda z: net.apply(variables, z, train=False)
  x, y = benchmark.load_points(512)
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, secs, **kw: compiles.append(secs) if name.startswith("/jax/core/compile/")
      else None)
  ce = lambda z, labels: -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits_fn(z)),
                                                      labels[:, None], axis=1))
  bare = jax.jit(jax.grad(ce))
  for n in (16, 64, 256):
    correct = np.argmax(np.asarray(jax.jit(logits_fn)(x[:2 * n])), -1) == y[:2 * n]
    xs, ys = x[:2 * n][correct][:n], y[:2 * n][correct][:n]
    bare(xs, ys).block_until_ready()
    start = time.perf_counter()
    for _ in range(10):
      bare(xs, ys).block_until_ready()
    bare_s = (time.perf_counter() - start) / 10
    del compiles[:]
    result = attacks.run_autoattack(logits_fn, xs, ys, jax.random.key(0), epsilon=8 / 255,
                                    version=["apgd-ce"], batch_size=500, progress=False)
    seconds, compiling = result.seconds["apgd-ce"], sum(compiles)
    print(f"{len(xs)} points: APGD-CE {seconds:.2f} s, of which compiling {compiling:.2f} s -> "
          f"{(seconds - compiling) / 100 * 1000:.1f} ms per iteration (100 iterations); bare "
          f"forward-backward {bare_s * 1000:.1f} ms", flush=True)


if __name__ == "__main__":
  main()
