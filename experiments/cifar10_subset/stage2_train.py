"""Stage 2: the final runs at eps 8/255, every method x 3 seeds, on the study's budget (study.py)
with stage 1's RegMix weights. Seed by seed (all methods at seed 0 first), so a partial study is
balanced. Each run evaluates PGD-10 on 500 validation images after every epoch (the per-epoch
curves); the test images are not read here.

  python experiments/cifar10_subset/stage2_train.py --data=../shared/data/cifar10_subset.npz
"""

from __future__ import annotations

import study


def main():
  args = study.parse_args(__doc__, lambda p: p.add_argument(
      "--methods", default=",".join(study.METHODS.values()), help="configs, comma-separated"))
  for seed in study.SEEDS:
    for config in args.methods.split(","):
      r = study.train(args, config, seed)
      print(f"{r['name']}: val clean {100 * r['clean']:.1f} pgd10 {100 * r['pgd10']:.1f} "
            f"({r['wall_seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
  main()
