"""What one host device of several costs when it runs alone: the oneDNN convolutions' thread count.

The commands make one CPU host device per core (`config.cpu_devices=0`), and a oneDNN call is
given the cores shared among the devices (`onednn.threads_per_device`), right for a step mapped
over all of them. AutoAttack on CPU runs each batch on one device while the others wait; with the
shared count its convolutions used one core of two. `Convolutions.on_one_device()` gives them every
core. This times, in one process with `--devices` host devices, a jitted forward pass and a jitted
input gradient (of the summed cross-entropy: one APGD iteration's work) of the small CNN (width 32,
batch 112: a Square query of the L2 benchmark) and ResNet-18 (batch 64: `CPU_GRAD_BATCH_SIZE`),
random weights, with the per-device count and with `on_one_device`, best of 5 calls after a
warm-up; then the same under one host device.

  python experiments/benchmarks/one_device_threads.py

Results: experiments/results/one_device_threads_cpu.json and .md (figure, command, machine, date).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RESULTS = os.path.join(ROOT, "experiments", "results", "one_device_threads_cpu.json")
CASES = (("small_cnn", {"width": 32}, 112), ("resnet18", {}, 64))


def child(devices: int) -> list[dict]:
  from regmix_jax.cpu import host  # pylint: disable=g-import-not-at-top  (before JAX starts)
  host.configure_cpu_devices(devices, "reduce")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from regmix_jax import cpu, models  # pylint: disable=g-import-not-at-top
  import harness  # pylint: disable=g-import-not-at-top  (beside this file; imports JAX)
  best_ms = lambda fn, *args: 1000 * harness.best_seconds(fn, args, 5)

  rows = []
  for name, kwargs, batch in CASES:
    for one in (False, True):
      chosen = cpu.choose("auto")
      chosen = chosen.on_one_device() if one else chosen
      net = models.get_model(name, 10, conv=chosen.conv, **kwargs)
      x = jax.random.uniform(jax.random.key(0), (batch, 32, 32, 3))
      y = jnp.zeros(batch, jnp.int32)
      variables = net.init(jax.random.key(1), x[:2], train=False)
      logits = lambda z: net.apply(variables, z, train=False)
      loss = lambda z: -jnp.sum(jax.nn.log_softmax(logits(z))[jnp.arange(batch), y])
      rows.append(dict(model=name, batch=batch, devices=devices, on_one_device=one,
                       convolutions=chosen.name,
                       threads=chosen.onednn_threads or "per device",
                       forward_ms=best_ms(jax.jit(logits), x),
                       input_grad_ms=best_ms(jax.jit(jax.grad(loss)), x)))
      if devices == 1:
        break  # one device: the shared count is every core already
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--devices", type=int, default=os.cpu_count() or 1)
  p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    print("RESULT " + json.dumps(child(args.child)), flush=True)
    return
  import autoattack_benchmark  # pylint: disable=g-import-not-at-top  (`machine`, `run_child`)
  rows = []
  for devices in (args.devices, 1):
    rows += autoattack_benchmark.run_child(
        [sys.executable, os.path.abspath(__file__), f"--child={devices}"], f"{devices} devices")
  machine = autoattack_benchmark.machine()
  with open(RESULTS, "w") as f:
    json.dump(dict(rows=rows, machine=machine, command="python " + os.path.relpath(
        os.path.abspath(__file__), ROOT) + "".join(" " + a for a in sys.argv[1:])), f, indent=1)
  lines = ["# oneDNN threads when one host device of several runs alone", "",
           f"`python experiments/benchmarks/one_device_threads.py`, {machine.get('date')}; "
           f"{machine.get('cpu')}, {machine.get('cores')} cores, avx512_bf16 "
           f"{machine.get('avx512_bf16')}, amx {machine.get('amx')}. Best of 5 calls, ms.", "",
           "| model | batch | host devices | oneDNN threads per call | convolutions | forward ms "
           "| input gradient ms |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['model']} | {r['batch']} | {r['devices']} | {r['threads']} | "
                 f"{r['convolutions']} | {r['forward_ms']:.1f} | {r['input_grad_ms']:.1f} |")
  with open(os.path.splitext(RESULTS)[0] + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
