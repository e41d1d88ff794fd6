"""The commands' CPU speed on two revisions of the library, side by side in one invocation.

For a refactor that must not change speed: each round runs one child process per revision (the
order alternating between rounds), each timing the training command's step
(`train.build_trainer(config).train_step` on a resident batch, as the training loop runs it) and
its per-epoch evaluation step (`Trainer.eval_steps`, the config's `eval.attacks`) on the same
real CIFAR-10 batch. The base revision runs from a temporary `git worktree`; the other side is the
working tree. Prints and writes each round's images/s and the medians' ratio (head / base).

  python experiments/benchmarks/compare_revisions.py --base=4e3233e \\
      --data=../shared/data/cifar10_subset.npz --rounds=2 --out=experiments/results/x.json

A child builds everything through APIs both revisions have (`train.build_trainer`,
`Trainer.train_step`, `Trainer.eval_steps`), so it times what the commands run, whatever moved.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from harness import ROOT, machine, run_child

# Run by each child with PYTHONPATH at its revision's root: prints one RESULT line.
_CHILD = r"""
import json, os, sys, time
import numpy as np
args = json.loads(sys.argv[1])
from regmix_jax import config as config_lib
try:  # the revision after the CPU plug-in moved (regmix_jax.cpu)
  from regmix_jax.cpu import host as cpu_setup
except ImportError:  # before it (regmix_jax.runtime)
  from regmix_jax import runtime as cpu_setup
config = config_lib.from_command_line(args["config"], args["overrides"])
cpu_setup.configure_cpu_for(config)
import jax
from regmix_jax import data, train
trainer = train.build_trainer(config)
state = trainer.data_parallel.put_state(trainer.create_state())
_, batch = next(trainer.batches(0))

def timed(fn, n):
  times = []
  for _ in range(n):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times

holder = {"state": state}
def step():
  holder["state"], metrics, _ = trainer.train_step(holder["state"], batch)
  return holder["state"]
first = timed(step, 1)[0]
train_s = timed(step, args["steps"])
eval_step = trainer.eval_steps["target"]
eval_batch = trainer.data_parallel.put_batch(next(iter(data.eval_batches(
    trainer.eval_split, batch_size=config.data.eval_batch_size,
    num_examples=config.data.eval_batch_size))))
eval_first = timed(lambda: eval_step(holder["state"], eval_batch), 1)[0]
eval_s = timed(lambda: eval_step(holder["state"], eval_batch), args["eval_repeats"])
n = config.data.batch_size
import regmix_jax
print("RESULT " + json.dumps({"module": os.path.dirname(os.path.dirname(regmix_jax.__file__)),
    "train_images_per_s": n * len(train_s) / sum(train_s), "train_step_s": train_s,
    "first_step_s": first, "eval_images_per_s": config.data.eval_batch_size * len(eval_s) / sum(eval_s),
    "eval_s": eval_s, "eval_first_s": eval_first, "devices": jax.device_count(),
    "convolutions": getattr(getattr(trainer, "convolutions", None), "name", None)}), flush=True)
"""


def run_side(root: str, args: dict) -> dict:
  """One child at the revision checked out at `root` (first on its PYTHONPATH)."""
  # -P: the child runs in the checkout (harness.run_child's cwd), which `python -c` would put
  # first on sys.path, ahead of PYTHONPATH: both sides would import the working tree.
  result = run_child(["env", f"PYTHONPATH={root}", "JAX_PLATFORMS=cpu", sys.executable, "-P",
                      "-c", _CHILD, json.dumps(args)], xla="")
  if not result.get("module", "").startswith(root):
    raise RuntimeError(f"the child meant to run {root} imported {result.get('module')}")
  if "error" in result:
    raise RuntimeError(f"the child at {root} failed:\n{result['error']}")
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--base", required=True, help="git revision to compare against")
  parser.add_argument("--config", default=os.path.join(ROOT, "configs", "cifar10", "fgsm_pgk.py"))
  parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data",
                                                     "cifar10_subset.npz"))
  parser.add_argument("--model", default="resnet18")
  parser.add_argument("--eval_attacks", default="pgd10")
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--eval_repeats", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--out", default="")
  flags = parser.parse_args()
  overrides = [f"--config.data.source=files", f"--config.data.dir={os.path.abspath(flags.data)}",
               f"--config.model.name={flags.model}", "--config.data.batch_size=128",
               "--config.data.eval_batch_size=128", f"--config.eval.attacks={flags.eval_attacks}"]
  child_args = dict(config=flags.config, overrides=overrides, steps=flags.steps,
                    eval_repeats=flags.eval_repeats)
  base_commit = subprocess.run(["git", "rev-parse", flags.base], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.strip()
  head_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.strip()
  dirty = bool(subprocess.run(["git", "status", "--porcelain", "regmix_jax"], cwd=ROOT,
                              check=True, capture_output=True, text=True).stdout.strip())
  rounds = []
  with tempfile.TemporaryDirectory() as tmp:
    base_root = os.path.join(tmp, "base")
    subprocess.run(["git", "worktree", "add", "--detach", base_root, base_commit], cwd=ROOT,
                   check=True, capture_output=True)
    try:
      for r in range(flags.rounds):
        order = [("base", base_root), ("head", ROOT)]
        if r % 2:
          order.reverse()
        result = {}
        for side, root in order:
          result[side] = run_side(root, child_args)
          print(f"round {r + 1} {side}: train {result[side]['train_images_per_s']:.2f} img/s, "
                f"eval {result[side]['eval_images_per_s']:.2f} img/s", flush=True)
        result["first"] = order[0][0]
        rounds.append(result)
    finally:
      subprocess.run(["git", "worktree", "remove", "--force", base_root], cwd=ROOT, check=False)
  summary = {}
  for kind in ("train_images_per_s", "eval_images_per_s"):
    base = statistics.median(r["base"][kind] for r in rounds)
    head = statistics.median(r["head"][kind] for r in rounds)
    summary[kind] = dict(base=base, head=head, ratio=head / base,
                         round_ratios=[r["head"][kind] / r["base"][kind] for r in rounds])
    print(f"{kind}: base {base:.2f}, head {head:.2f}, head/base {head / base:.3f} "
          f"(rounds {', '.join(f'{x:.3f}' for x in summary[kind]['round_ratios'])})")
  record = dict(date=time.strftime("%Y-%m-%d %H:%M"), machine=machine(), base=base_commit,
                head=head_commit + (" + working tree" if dirty else ""),
                command=" ".join(sys.argv), rounds=rounds, summary=summary)
  if flags.out:
    with open(flags.out, "w") as f:
      json.dump(record, f, indent=1)


if __name__ == "__main__":
  main()
