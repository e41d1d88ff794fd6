"""Stage 1: RegMix's untuned weights chosen on the validation split, under the study's budget.

amr_alpha (with amr_beta = alpha / 2, the paper's summary) for FGSM-AMR, then agr_gamma at that
alpha for FGSM-AGR; FGSM-PGK under the same budget for reference. Seed 0, validation split only
(1000 held-out training images; the test images are not read). Criterion: validation PGD-10
accuracy at the end of training, then clean accuracy. Every other field keeps the recipe of its
config (docs/methods.md); the schedules are the study's (study.py).

  python experiments/cifar10_subset/stage1_tune.py --data=../shared/data/cifar10_subset.npz

Writes experiments/results/cifar10_subset_chosen.json (the choice and every setting's result),
which stages 2 and 4 read.
"""

from __future__ import annotations

import json
import os

import study

ALPHAS = (1.0, 4.0)
GAMMAS = (0.05, 0.2)


def main():
  args = study.parse_args(__doc__)

  def run(name, config, method):
    overrides = study.budget(args.data, config) + ["--config.seed=0"] + method
    r = study.common.run_cli(args.workdir_root, f"tune/{name}", f"cifar10/{config}", overrides)
    return dict(r, method_overrides=method)

  key = lambda r: (r["pgd10"], r["clean"])
  rows = [run("fgsm_pgk", "fgsm_pgk", [])]
  amr = [run(f"amr_a{a:g}", "fgsm_amr",
             [f"--config.method.amr_alpha={a}", f"--config.method.amr_beta={a / 2}"])
         for a in ALPHAS]
  best_amr = max(amr, key=key)
  agr = [run(f"agr_g{g:g}", "fgsm_agr", best_amr["method_overrides"] +
             [f"--config.method.agr_gamma={g}"]) for g in GAMMAS]
  best_agr = max(agr, key=key)
  rows += amr + agr
  os.makedirs(study.RESULTS, exist_ok=True)
  with open(study.CHOSEN, "w") as f:
    json.dump({"criterion": "validation pgd10, then clean (seed 0, 1000 validation images)",
               "overrides": {"fgsm_amr": best_amr["method_overrides"],
                             "fgsm_agr": best_agr["method_overrides"]},
               "runs": rows}, f, indent=1)
  for r in rows:
    print(f"{r['name']:<10} {' '.join(r['method_overrides']):<80} clean {100 * r['clean']:.1f} "
          f"pgd10 {100 * r['pgd10']:.1f}")
  print("chosen:", best_amr["name"], best_agr["name"], "->", study.CHOSEN)


if __name__ == "__main__":
  main()
