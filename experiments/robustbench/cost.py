"""What evaluating a RobustBench model costs here: the measured time of one input-gradient pass
(forward + backward, what PGD and APGD pay per point and step) of each covered architecture, and
from it an estimate of a standard AutoAttack on N points of a model with the leaderboard's
accuracies (AutoAttack's pass counts, below). Weights are random: only time is measured.

  python experiments/robustbench/cost.py [--batch=32] [--points=100] \
      [--out=experiments/results/robustbench_cost_cpu.json]

Pass counts of the standard L-inf version (autoattack/autoattack.py `set_version('standard')`):
APGD-CE 100 steps, 1 restart, on the clean-correct points; APGD-T 9 target classes x 100 steps
on the points still robust; FAB-T 9 x 100 steps (a forward and a gradient of one logit
difference each: about one pass); Square 5,000 queries, each a forward (timed apart), on the
points still robust. The robust fraction after APGD-CE is taken as the final one
(the later attacks take little: the official logs), so the estimate is a floor.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from regmix_jax import cpu, models, robustbench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# (our model, sizes, an entry of that architecture whose figures the estimate uses)
CASES = (("resnet18", {}, "cifar10/Linf/Sehwag2021Proxy_R18"),
         ("dm_preact_resnet18", {}, "cifar10/Linf/Rebuffi2021Fixing_R18_ddpm"),
         ("wrn", {"depth": 28, "width": 10}, "cifar10/Linf/Carmon2019Unlabeled"),
         ("wrn", {"depth": 34, "width": 10}, "cifar10/Linf/Zhang2019Theoretically"),
         ("dm_wrn", {"depth": 28, "width": 10}, "cifar10/Linf/Gowal2020Uncovering_28_10_extra"),
         ("dm_wrn", {"depth": 70, "width": 16}, "cifar10/Linf/Gowal2020Uncovering_70_16"))


def autoattack_passes(points: int, clean: float, robust: float) -> dict[str, float]:
  """Per attack, the input-gradient passes (Square: forward passes) of a standard L-inf
  AutoAttack on `points` points of a model with clean / robust accuracy (fractions)."""
  correct, left = points * clean, points * robust
  return {"apgd-ce": correct * 100, "apgd-t": left * 9 * 100, "fab-t": left * 9 * 100,
          "square": left * 5000}


def time_pass(model, sizes, batch, convolutions):
  net = models.get_model(model, 10, normalize="cifar10", conv=convolutions.conv, **sizes)
  x = jax.random.uniform(jax.random.key(0), (batch, 32, 32, 3))
  y = jnp.arange(batch) % 10
  variables = net.init(jax.random.key(1), x[:1], train=False)

  def loss(x):
    logits = net.apply(variables, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

  def timed(fn):
    t0 = time.perf_counter()
    fn(x).block_until_ready()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(3):
      t0 = time.perf_counter()
      fn(x).block_until_ready()
      times.append(time.perf_counter() - t0)
    return compile_s, min(times) / batch

  compile_grad, per_grad = timed(jax.jit(jax.grad(loss)))
  compile_fwd, per_fwd = timed(jax.jit(lambda x: net.apply(variables, x, train=False)))
  return compile_grad + compile_fwd, per_grad, per_fwd


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--points", type=int, default=100)
  parser.add_argument("--cases", default="all", help="comma-separated indices into CASES")
  parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "results",
                                                    "robustbench_cost_cpu.json"))
  args = parser.parse_args()
  convolutions = cpu.choose("auto")
  flags = sorted(set(open("/proc/cpuinfo").read().split()) & {
      "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16"}) if (
          os.path.exists("/proc/cpuinfo")) else []
  rows = []
  picked = CASES if args.cases == "all" else [CASES[int(i)] for i in args.cases.split(",")]
  for model, sizes, key in picked:
    entry = robustbench.ENTRIES[key]
    compile_s, per_grad, per_fwd = time_pass(model, sizes, args.batch, convolutions)
    passes = autoattack_passes(args.points, entry.clean / 100, entry.autoattack / 100)
    hours = {k: v * (per_fwd if k == "square" else per_grad) / 3600 for k, v in passes.items()}
    rows.append(dict(model=model, sizes=sizes, entry=key, compile_s=round(compile_s, 1),
                     seconds_per_gradient=round(per_grad, 4),
                     seconds_per_forward=round(per_fwd, 4),
                     passes={k: round(v) for k, v in passes.items()},
                     autoattack_hours=round(sum(hours.values()), 2),
                     per_attack_hours={k: round(v, 2) for k, v in hours.items()}))
    print(json.dumps(rows[-1]), flush=True)
  result = dict(
      date=datetime.datetime.now().isoformat(timespec="minutes"),
      command=" ".join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
      machine=dict(cpu=subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split(
          "Model name:")[-1].splitlines()[0].strip() if sys.platform == "linux" else
          platform.processor(), cores=os.cpu_count(), flags=flags,
          jax=jax.__version__, convolutions=convolutions.describe()),
      batch=args.batch, points=args.points, rows=rows)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
