"""Does bf16 mixed precision keep robust accuracy? FGSM-PGK and TRADES, small CNN on the CIFAR-10
subset, 3 seeds each in float32 and in bfloat16 (`model.dtype`), the same budget: 5 epochs of
batch 128 on the 5085 training images, lr x0.1 at epochs 3 and 4, evaluated once at the end on
the 1017 test images (clean and PGD-20 at 8/255, step 2/255, in float32 as the library
evaluates). Each run is one CLI run in its own workdir (resumable; finished runs are read, not
re-run).

  python experiments/precision/run.py --data=../shared/data/cifar10_subset.npz

Writes experiments/results/precision_accuracy.md (and .json): per precision the mean, standard
deviation and standard error over seeds, and whether the bf16 means lie within one standard
error of the float32 ones.
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
DTYPES = ("float32", "bfloat16")
SEEDS = (0, 1, 2)
EPOCHS = 5


def overrides(data: str, config: str, dtype: str, seed: int) -> list[str]:
  return ["--config.data.source=files", f"--config.data.dir={data}",
          "--config.model.name=small_cnn", "--config.model.width=16",
          f"--config.model.dtype={dtype}", f"--config.seed={seed}",
          f"--config.num_epochs={EPOCHS}", f"--config.optim.milestones=({EPOCHS - 2},{EPOCHS - 1})",
          "--config.eval.attacks=clean,pgd20", f"--config.eval.every_epochs={EPOCHS}",
          "--config.eval.split=test", "--config.log_every_steps=8"]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=common.DEFAULT_DATA)
  p.add_argument("--workdir_root", default=os.path.join(common.ROOT, "runs", "precision"))
  args = p.parse_args()
  common.require_data(args.data)
  data = os.path.relpath(os.path.abspath(args.data), common.ROOT)
  t0 = time.time()
  runs = {}
  for seed in SEEDS:  # seed by seed, so a partial study stays balanced
    for config in METHODS:
      for dtype in DTYPES:
        runs[(config, dtype, seed)] = common.run_cli(
            args.workdir_root, f"{config}_{dtype}_s{seed}", f"cifar10/{config}",
            overrides(data, config, dtype, seed))
  lines = ["# bf16 mixed precision vs float32: robust accuracy", "",
           "`python experiments/precision/run.py --data=../shared/data/cifar10_subset.npz`; "
           f"small CNN (width 16), {EPOCHS} epochs, batch 128, 5085 training images; accuracy (%) "
           "on the 1017 test images, eps 8/255, evaluated in float32. Mean ± std over seeds "
           f"{SEEDS}; SE = std / sqrt(3). Written {time.strftime('%Y-%m-%d')}.", "",
           "The img/s column is each run's own wall-clock training speed: it depends on what "
           "else ran on the machine then, and is no speed comparison (that is "
           "`experiments/benchmarks/benchmark.py`'s).", ""]
  notes = os.path.join(RESULTS, "precision_accuracy.notes.md")
  if os.path.exists(notes):  # the hand-written reading and history
    with open(notes) as f:
      lines += [f.read().rstrip(), ""]
  lines += ["| method | metric | float32 | bfloat16 | bf16 - fp32 | within 1 SE of fp32 | "
           "per seed fp32 / bf16 | train img/s fp32 / bf16 |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  summary = {}
  for config in METHODS:
    for metric in ("clean", "pgd20"):
      stats = {}
      for dtype in DTYPES:
        v = np.array([100 * runs[(config, dtype, s)][metric] for s in SEEDS])
        stats[dtype] = (v.mean(), v.std(ddof=1), v.std(ddof=1) / np.sqrt(len(v)), v.tolist())
      diff = stats["bfloat16"][0] - stats["float32"][0]
      within = abs(diff) <= stats["float32"][2]
      speed = [np.mean([runs[(config, d, s)]["train_images_per_sec"] for s in SEEDS])
               for d in DTYPES]
      lines.append(f"| {config} | {metric} | {stats['float32'][0]:.2f} ± {stats['float32'][1]:.2f}"
                   f" | {stats['bfloat16'][0]:.2f} ± {stats['bfloat16'][1]:.2f} | {diff:+.2f} | "
                   f"{'yes' if within else 'no'} (SE {stats['float32'][2]:.2f}) | "
                   f"{' '.join(f'{x:.2f}' for x in stats['float32'][3])} / "
                   f"{' '.join(f'{x:.2f}' for x in stats['bfloat16'][3])} | "
                   f"{speed[0]:.0f} / {speed[1]:.0f} |")
      summary[f"{config}:{metric}"] = {"stats": stats, "diff": diff, "within_1se": bool(within)}
  lines += ["", f"Wall time of this invocation: {time.time() - t0:.0f} s (finished runs are read).",
            "", "Each run's command:", ""] + [f"    {r['command']}" for r in runs.values()]
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, "precision_accuracy.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(RESULTS, "precision_accuracy.json"), "w") as f:
    json.dump({"summary": summary, "runs": {":".join(map(str, k)): v for k, v in runs.items()}},
              f, indent=1, default=float)
  print("\n".join(lines))


if __name__ == "__main__":
  main()
