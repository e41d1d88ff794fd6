"""Does bf16 mixed precision keep robust accuracy? FGSM-PGK and TRADES, small CNN on the CIFAR-10
subset, 3 seeds each in float32 and in bfloat16 (`model.dtype`), the same budget: 5 epochs of
batch 128 on the 5085 training images, lr x0.1 at epochs 3 and 4, evaluated once at the end on
the 1017 test images (clean and PGD-20 at 8/255, step 2/255, in float32 as the library
evaluates). Each run is one CLI run in its own workdir (resumable; finished runs are read, not
re-run).

  python experiments/precision/run.py --data=../shared/data/cifar10_subset.npz
  python experiments/precision/run.py --methods=trades \
      --variants=bfloat16,bfloat16-no-fix,bfloat16-conv1-float32 --name=precision_trades_2026-12-07

Writes experiments/results/<--name>.md (and .json; default precision_accuracy): per policy
(`VARIANTS`: float32, the library's bfloat16, and bfloat16 variants of TRADES' fixes) the mean,
standard deviation and standard error over seeds, and whether each policy's mean lies within one
standard error of float32's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

RESULTS = os.path.join(common.ROOT, "experiments", "results")
METHODS = ("fgsm_pgk", "trades")
SEEDS = (0, 1, 2)
EPOCHS = 5
# The precision policies compared (each against "float32"): name -> config overrides. The
# TRADES-only fields are dropped for other methods.
VARIANTS = {
    "float32": ["--config.model.dtype=float32"],
    "bfloat16": ["--config.model.dtype=bfloat16"],  # the library's bf16 policy as it is
    # TRADES' attack without its float32 first step (the fix of 2026-11-27): the accuracy loss
    # that fix removed, on today's code.
    "bfloat16-no-fix": ["--config.model.dtype=bfloat16", "--config.method.first_step_float32=False"],
    # The other fix proposed then: the first convolution in float32 instead of the first step.
    "bfloat16-conv1-float32": ["--config.model.dtype=bfloat16",
                               "--config.model.first_conv_float32=True",
                               "--config.method.first_step_float32=False"],
}
TRADES_ONLY = ("--config.method.first_step_float32",)


def overrides(data: str, config: str, variant: str, seed: int) -> list[str]:
  policy = [o for o in VARIANTS[variant]
            if config == "trades" or not o.startswith(TRADES_ONLY)]
  return ["--config.data.source=files", f"--config.data.dir={data}",
          "--config.model.name=small_cnn", "--config.model.width=16", *policy,
          f"--config.seed={seed}",
          f"--config.num_epochs={EPOCHS}", f"--config.optim.milestones=({EPOCHS - 2},{EPOCHS - 1})",
          "--config.eval.attacks=clean,pgd20", f"--config.eval.every_epochs={EPOCHS}",
          "--config.eval.split=test", "--config.log_every_steps=8"]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=common.DEFAULT_DATA)
  p.add_argument("--workdir_root", default=os.path.join(common.ROOT, "runs", "precision"))
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--variants", default="float32,bfloat16",
                 help=f"comma-separated, of {', '.join(VARIANTS)}; each is compared with float32")
  p.add_argument("--name", default="precision_accuracy",
                 help="results file name (experiments/results/<name>.md and .json)")
  args = p.parse_args()
  common.require_data(args.data)
  data = os.path.relpath(os.path.abspath(args.data), common.ROOT)
  methods = args.methods.split(",")
  variants = ["float32"] + [v for v in args.variants.split(",") if v != "float32"]
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    p.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
  t0 = time.time()
  runs = {}
  for seed in SEEDS:  # seed by seed, so a partial study stays balanced
    for config in methods:
      for variant in variants:
        runs[(config, variant, seed)] = common.run_cli(
            args.workdir_root, f"{config}_{variant}_s{seed}", f"cifar10/{config}",
            overrides(data, config, variant, seed))
  command = "python experiments/precision/run.py " + " ".join(sys.argv[1:])
  lines = ["# Mixed precision vs float32: robust accuracy", "",
           f"`{command}`; "
           f"small CNN (width 16), {EPOCHS} epochs, batch 128, 5085 training images; accuracy (%) "
           "on the 1017 test images, eps 8/255, evaluated in float32. Mean ± std over seeds "
           f"{SEEDS}; SE = std / sqrt(3). Written {time.strftime('%Y-%m-%d')}.", "",
           "The img/s column is each run's own wall-clock training speed: it depends on what "
           "else ran on the machine then, and is no speed comparison (that is "
           "`experiments/benchmarks/benchmark.py`'s).", ""]
  notes = os.path.join(RESULTS, f"{args.name}.notes.md")
  if os.path.exists(notes):  # the hand-written reading and history
    with open(notes) as f:
      lines += [f.read().rstrip(), ""]
  lines += ["| method | metric | float32 | policy | policy mean | policy - fp32 | "
            "within 1 SE of fp32 | per seed fp32 / policy | train img/s fp32 / policy |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  summary = {}
  for config in methods:
    for metric in ("clean", "pgd20"):
      stats = {}
      for variant in variants:
        v = np.array([100 * runs[(config, variant, s)][metric] for s in SEEDS])
        stats[variant] = (v.mean(), v.std(ddof=1), v.std(ddof=1) / np.sqrt(len(v)), v.tolist())
      speed = {d: np.mean([runs[(config, d, s)]["train_images_per_sec"] for s in SEEDS])
               for d in variants}
      ref = stats["float32"]
      for variant in variants[1:]:
        diff = stats[variant][0] - ref[0]
        within = abs(diff) <= ref[2]
        lines.append(
            f"| {config} | {metric} | {ref[0]:.2f} ± {ref[1]:.2f} | {variant} | "
            f"{stats[variant][0]:.2f} ± {stats[variant][1]:.2f} | {diff:+.2f} | "
            f"{'yes' if within else 'no'} (SE {ref[2]:.2f}) | "
            f"{' '.join(f'{x:.2f}' for x in ref[3])} / "
            f"{' '.join(f'{x:.2f}' for x in stats[variant][3])} | "
            f"{speed['float32']:.0f} / {speed[variant]:.0f} |")
        summary[f"{config}:{metric}:{variant}"] = {"stats": stats, "diff": diff,
                                                   "within_1se": bool(within)}
  lines += ["", f"Wall time of this invocation: {time.time() - t0:.0f} s (finished runs are read).",
            "", "Each run's command:", ""] + [f"    {r['command']}" for r in runs.values()]
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, f"{args.name}.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
    json.dump({"summary": summary, "runs": {":".join(map(str, k)): v for k, v in runs.items()}},
              f, indent=1, default=float)
  print("\n".join(lines))


if __name__ == "__main__":
  main()
