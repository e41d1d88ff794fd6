"""Stage 3: every final run (stage 2) evaluated once on the 1017 test images.

`--parts`: `main`, at eps 8/255 clean, PGD-20, PGD-50 (step 2/255) and C&W-20 on all 1017
images; `sweep`, PGD-20 at eps 2, 4, 12 and 16 /255 (step eps/4) on all 1017; `aa`, AutoAttack
(standard: APGD-CE, APGD-T, FAB-T, Square) at 8/255 on the first `--aa_examples` test images
(with clean and PGD-50 on the same images when that is fewer than all, so the gap to PGD-50 is
paired). On this CPU `main` costs about 2 min per model, `sweep` 2 min, `aa` 1-4 min per 100
images (here AutoAttack ran on the first 100 test images of every seed's model). The EMA
teacher is evaluated where the run kept one (the FGSM-PGK family), as the papers do. Results
are appended to each run's
`eval_records.jsonl`; a run already evaluated with the same attacks, radius and number
of images is skipped, so a stopped stage resumes.

  python experiments/cifar10_subset/stage3_evaluate.py --data=../shared/data/cifar10_subset.npz
"""

from __future__ import annotations

import os

from regmix_jax import config as config_lib, cpu, evaluate

import study  # pylint: disable=wrong-import-order

SWEEP = (2, 4, 12, 16)  # eps/255 besides 8, PGD-20
N_TEST = 1017


def done(workdir: str, attacks: str, epsilon: float, n: int) -> bool:
  """Whether the latest checkpoint of `workdir` has a test record covering this evaluation."""
  return any(r.covers(attacks.split(","), epsilon=epsilon, n_examples=n)
             for r in evaluate.latest_eval_records(workdir))


def main():
  def add(p):
    p.add_argument("--parts", default="main,sweep,aa",
                   help="which evaluations: main (clean, PGD-20/50, C&W-20 at 8/255), sweep (PGD-20 "
                   "at the other radii), aa (AutoAttack)")
    p.add_argument("--aa_examples", type=int, default=N_TEST,
                   help="AutoAttack on the first N test images")
    p.add_argument("--seeds", default=",".join(map(str, study.SEEDS)),
                   help="the seeds' runs to evaluate, comma-separated")
  args = study.parse_args(__doc__, add)
  os.chdir(study.common.ROOT)  # the runs' relative data paths start here
  cpu.configure_cpu_for(config_lib.base_config())

  runs = [(config, int(seed)) for seed in args.seeds.split(",") for config in study.METHODS.values()]
  parts = args.parts.split(",")
  jobs = [("clean,pgd20,pgd50,cw20", 8, N_TEST)] if "main" in parts else []
  jobs += [("pgd20", e, N_TEST) for e in SWEEP] if "sweep" in parts else []
  if "aa" in parts:
    n_aa = min(args.aa_examples, N_TEST)
    if n_aa < N_TEST:  # the same images under clean and PGD-50, for a paired comparison
      jobs.append(("clean,pgd50", 8, n_aa))
    jobs.append(("aa", 8, n_aa))
  for attacks, eps, n in jobs:  # job by job, so AutoAttack comes last for every run
    for config, seed in runs:
      workdir = study.workdir(args, config, seed)
      if not os.path.exists(os.path.join(workdir, "final_eval.json")):
        print(f"{workdir}: not trained yet, skipped", flush=True)
        continue
      if done(workdir, attacks, eps / 255, n):
        continue
      record = evaluate.evaluate_checkpoint(workdir, attacks_spec=attacks, n_examples=n,
                                            epsilon=eps / 255, split="test", data_dir=args.data,
                                            progress=False)
      shown = {k: round(100 * v, 2) for k, v in record["accuracy"].items()}
      print(f"{study.run_name(config, seed)} eps {eps}/255 n {n}: {shown} "
            f"({sum(record['seconds'].values()):.0f} s)", flush=True)


if __name__ == "__main__":
  main()
