"""Why TRADES' attack needs its first step in float32 under a bf16 policy: the sign agreement
of the attack's input gradients, bf16 policy against float32, step by step along one float32
trajectory (the same start, x + 0.001 N(0, I), and reference P(f(x)) per precision).

  python experiments/precision/first_step_signs.py --workdir=runs/precision/trades_float32_s0

Loads a run's final (EMA) weights, attacks the first 256 test images of the CIFAR-10 subset with
TRADES' settings (10 steps of 0.007 in 0.031, eval mode) and prints, per step, the fraction of
pixels whose gradient sign the bf16 model agrees on with the float32 one, and the fraction of
pixels of x + 0.001 N(0, I) that round to the same bfloat16 as x. Recorded in
experiments/results/precision_accuracy.notes.md.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from regmix_jax import attacks, config as config_lib, cpu, evaluate, losses, methods, models
from regmix_jax.cpu import host

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a TRADES run (float32) of run.py")
  p.add_argument("--data", default=common.DEFAULT_DATA)
  p.add_argument("--points", type=int, default=256)
  args = p.parse_args()
  common.require_data(args.data)
  host.configure_cpu_devices(1, "reduce")
  config = config_lib.load_json(os.path.join(args.workdir, "config.json"))
  roles = methods.get_method(config.method.name).roles
  _, state, step = evaluate.restore_state(args.workdir, config, 10, (32, 32, 3))
  variables = state.eval_variables("target")
  with np.load(args.data) as d:
    x = jnp.asarray(d["x_test"][:args.points], jnp.float32) / 255.0
  cfg = methods.get_method("trades").defaults
  logits, grads = {}, {}
  conv = cpu.convolutions_for(config).conv  # the run's, as its evaluation computes
  for dtype in ("float32", "bfloat16"):
    net = models.build_models(config, roles, 10, dtype=dtype, conv=conv)["target"]
    f = jax.jit(lambda z, net=net: net.apply(variables, z, train=False))
    logits[dtype] = f
    grads[dtype] = jax.jit(
        lambda ref, z, f=f: jax.grad(lambda z: losses.kl_div(ref, f(z)).sum())(z))
  references = {d: logits[d](x) for d in logits}
  z = x + cfg["init_std"] * jax.random.normal(jax.random.key(0), x.shape)
  same = float(jnp.mean(z.astype(jnp.bfloat16) == x.astype(jnp.bfloat16)))
  print(f"{args.workdir} (step {step}), {args.points} test images: {100 * same:.1f}% of the "
        "pixels of x + 0.001 N(0, I) round to the bfloat16 of x")
  for i in range(cfg["num_steps"]):
    g32 = grads["float32"](references["float32"], z)
    g16 = grads["bfloat16"](references["bfloat16"], z)
    agree = float(jnp.mean(jnp.sign(g32) == jnp.sign(g16)))
    print(f"step {i + 1}: gradient signs agree on {100 * agree:.1f}% of the pixels")
    z = attacks.project(z + cfg["step_size"] * jnp.sign(g32), x, cfg["epsilon"])


if __name__ == "__main__":
  main()
