"""RegMix against FGSM-PGK, and D2R against TRADES, under one small budget on real CIFAR-10.

The check asked by the RegMix and D2R issues: each method trained from the CLI on the CIFAR-10
subset (5085 training images; evaluated once on its 1017 test images) with a small model and the
same budget: 6 epochs, batch 128, lr 0.1 with x0.1 at epochs 4 and 5 (D2R keeps its 0.02 first
epoch), small_cnn width 32 (D2R's guide: small_cnn width 16). One seed: a sanity check of the
implementation at CPU scale, not the papers' comparison (that is experiments/cifar10_subset/).

  python experiments/method_comparison/run.py --data=../shared/data/cifar10_subset.npz

Writes experiments/method_comparison/results.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=g-import-not-at-top

HERE = os.path.dirname(os.path.abspath(__file__))
EPOCHS = 6


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default=common.DEFAULT_DATA)
  parser.add_argument("--workdir_root", default=os.path.join(common.ROOT, "runs", "comparison"))
  parser.add_argument("--methods", default="fgsm_pgk,fgsm_agr,trades,d2r")
  args = parser.parse_args()
  common.require_data(args.data)
  budget = ["--config.data.source=files", f"--config.data.dir={args.data}",
            "--config.model.name=small_cnn", "--config.model.width=32",
            f"--config.num_epochs={EPOCHS}", "--config.eval.attacks=clean,pgd10,pgd20",
            f"--config.eval.every_epochs={EPOCHS}", "--config.log_every_steps=10"]
  extra = {"d2r": ["--config.guide_model.name=small_cnn", "--config.guide_model.width=16",
                   f"--config.optim.boundaries=(1,{EPOCHS - 2},{EPOCHS - 1})"]}
  milestones = [f"--config.optim.milestones=({EPOCHS - 2},{EPOCHS - 1})"]
  t0 = time.time()
  rows = [common.run_cli(args.workdir_root, m, f"cifar10/{m}", budget + extra.get(m, milestones))
          for m in args.methods.split(",")]
  lines = ["# Method sanity comparison on the real CIFAR-10 subset", "",
           f"Machine: {os.cpu_count()}-core CPU (the project's dev machine), JAX on CPU, 2 host "
           f"devices. Budget: {EPOCHS} epochs on 5085 training images, small_cnn width 32 "
           "(D2R guide: width 16), batch 128; accuracy (%) on the 1017 test images, eps 8/255, "
           "PGD step 2/255; the EMA teacher for the FGSM-PGK family. One seed.", "",
           "| method | clean | PGD-10 | PGD-20 | train img/s | wall (s) |",
           "| --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    lines.append(f"| {r['name']} | {100 * r['clean']:.2f} | {100 * r['pgd10']:.2f} | "
                 f"{100 * r['pgd20']:.2f} | {r['train_images_per_sec']:.0f} | "
                 f"{r['wall_seconds']:.0f} |")
  lines += ["", f"Wall time of this invocation: {time.time() - t0:.0f} s (finished runs are read, "
            "not re-run).", "", "Command:", "",
            "    python experiments/method_comparison/run.py --data=../shared/data/cifar10_subset.npz",
            "", "Each run:", ""] + [f"    {r['command']}" for r in rows]
  with open(os.path.join(HERE, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
