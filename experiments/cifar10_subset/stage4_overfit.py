"""Stage 4: catastrophic overfitting at eps 16/255. The single-step methods (FGSM-RS, FGSM-PGK,
FGSM-AMR, FGSM-AGR) and PGD-AT as the multi-step reference, trained at eps 16/255 (each recipe's
step scaled with eps: study.epsilon_overrides), seed 0, on the study's budget; PGD-10 at 16/255 on
500 validation images after every epoch. A run has overfit catastrophically when that robust
accuracy collapses during training (`study.collapsed`: it ends below half its best and under
5%) while its training accuracy on its own single-step examples stays high.

  python experiments/cifar10_subset/stage4_overfit.py --data=../shared/data/cifar10_subset.npz
"""

from __future__ import annotations

import study

CONFIGS = ("fgsm_rs", "fgsm_pgk", "fgsm_amr", "fgsm_agr", "pgd_at")


def main():
  args = study.parse_args(__doc__, lambda p: p.add_argument(
      "--methods", default=",".join(CONFIGS), help="configs, comma-separated"))
  for config in args.methods.split(","):
    r = study.train(args, config, 0, eps=16)
    print(f"{r['name']}: val clean {100 * r['clean']:.1f} pgd10@16 {100 * r['pgd10']:.1f}",
          flush=True)


if __name__ == "__main__":
  main()
