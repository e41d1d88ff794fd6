"""What every stage of the CIFAR-10-subset study shares: the budget, the methods, the seeds, where
runs live, and the weights stage 1 chose. Each training run is one CLI run in its own workdir
(`common.run_cli`), so a stopped stage resumes where it was.

Budget (one for every method): small_cnn width 16 (D2R: guide small_cnn width 8, target width 16),
5 epochs of batch 128 on 4085 training images; 1000 training images are held out as the
validation split (`data.val_size=1000`, `data.seed=0`: the same split in every run), which the
per-epoch evaluation and stage 1's choice use. The 1017 test images are read once, by stage 3.
Learning rates keep each recipe's shape, compressed to 5 epochs: multistep x0.1 at epochs 3 and 4
(the papers' 100/105 of 110); D2R's released piecewise 0.02 / 0.1 / 0.01 / 0.001 with boundaries
1, 3, 4; FGSM-RS its cyclic rate to 0.2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(common.ROOT, "experiments", "results")
CHOSEN = os.path.join(RESULTS, "cifar10_subset_chosen.json")  # stage 1's output
EPOCHS = 5
WIDTH, GUIDE_WIDTH = 16, 8
SEEDS = (0, 1, 2)
# Display name -> config file under configs/cifar10/ (its method's recipe).
METHODS = {"FGSM-RS": "fgsm_rs", "FGSM-PGK": "fgsm_pgk", "FGSM-AMR": "fgsm_amr",
           "FGSM-AGR": "fgsm_agr", "D2R": "d2r", "TRADES": "trades", "PGD-AT": "pgd_at"}
TUNED = ("fgsm_amr", "fgsm_agr")  # their weights come from stage 1


def parse_args(doc: str, add=None) -> argparse.Namespace:
  """The stage's flags (`add(parser)` adds its own); `--data` becomes relative to the project
  root (where the runs start) and is checked to exist."""
  p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
  p.add_argument("--data", default=common.DEFAULT_DATA,
                 help="path to cifar10_subset.npz (default ../shared/data/cifar10_subset.npz)")
  p.add_argument("--workdir_root", default=os.path.join(common.ROOT, "runs", "cifar10_subset"),
                 help="where the runs' workdirs go (default runs/cifar10_subset)")
  if add is not None:
    add(p)
  args = p.parse_args()
  common.require_data(args.data)
  args.data = os.path.relpath(os.path.abspath(args.data), common.ROOT)
  return args


def budget(data: str, config: str, *, epochs: int = EPOCHS, eval_eps: int = 8) -> list[str]:
  """CLI overrides that put `configs/cifar10/<config>.py` on the study's budget; the per-epoch
  validation PGD-10 runs at eval_eps/255 (step eps/4)."""
  eps = eval_eps / 255
  overrides = ["--config.data.source=files", f"--config.data.dir={data}",
               "--config.data.val_size=1000", "--config.eval.split=val",
               "--config.eval.num_examples=500", "--config.eval.attacks=clean,pgd10",
               f"--config.eval.epsilon={eps!r}", f"--config.eval.step_size={eps / 4!r}",
               "--config.eval.every_epochs=1", "--config.log_every_steps=8",
               "--config.model.name=small_cnn", f"--config.model.width={WIDTH}",
               f"--config.num_epochs={epochs}"]
  if config == "d2r":
    overrides += ["--config.guide_model.name=small_cnn", f"--config.guide_model.width={GUIDE_WIDTH}",
                  f"--config.optim.boundaries=(1,{epochs - 2},{epochs - 1})"]
  elif config != "fgsm_rs":
    overrides += [f"--config.optim.milestones=({epochs - 2},{epochs - 1})"]
  return overrides


def chosen() -> dict[str, list[str]]:
  """Stage 1's choice: `{config: [method overrides]}` for the tuned configs; exits when absent."""
  if not os.path.exists(CHOSEN):
    sys.exit(f"No {CHOSEN}: run stage 1 first (python experiments/cifar10_subset/stage1_tune.py).")
  with open(CHOSEN) as f:
    return json.load(f)["overrides"]


def run_name(config: str, seed: int, eps: int = 8) -> str:
  return f"eps{eps}/{config}_s{seed}"


def train_overrides(data: str, config: str, seed: int, *, eps: int = 8,
                    epochs: int = EPOCHS) -> list[str]:
  """The CLI overrides of one final run of `configs/cifar10/<config>.py` (stage 2 at eps 8,
  stage 4 at eps 16): the budget, the seed, stage 1's weights and the scaled radius."""
  overrides = budget(data, config, epochs=epochs, eval_eps=eps)
  overrides += [f"--config.seed={seed}", *chosen().get(config, [])]
  if eps != 8:  # the method's radius and steps, scaled from its 8/255 recipe
    overrides += epsilon_overrides(config, eps)
  return overrides


def train(args, config: str, seed: int, *, eps: int = 8, epochs: int = EPOCHS) -> dict:
  """Trains one final run (`train_overrides`) unless it has finished; returns
  `common.run_cli`'s record (final validation accuracies, command)."""
  return common.run_cli(args.workdir_root, run_name(config, seed, eps), f"cifar10/{config}",
                        train_overrides(args.data, config, seed, eps=eps, epochs=epochs))


def epsilon_overrides(config: str, eps: int) -> list[str]:
  """The training radius eps/255 with each recipe's step scaled with it (FGSM-RS 1.25 eps;
  FGSM-PGK family alpha = eps; PGD-AT eps/4; TRADES / D2R 0.007/0.031 of eps)."""
  e = eps / 255
  step = {"fgsm_rs": 1.25 * e, "pgd_at": e / 4, "trades": e * 0.007 / 0.031,
          "d2r": e * 0.007 / 0.031}.get(config, e)
  return [f"--config.method.epsilon={e!r}", f"--config.method.step_size={step!r}"]


def workdir(args, config: str, seed: int, eps: int = 8) -> str:
  return os.path.join(args.workdir_root, run_name(config, seed, eps))


def collapsed(curve) -> bool:
  """Catastrophic overfitting in a run's per-epoch robust accuracy `curve` (fractions): it ended
  below half its best and under 5%."""
  return curve[-1] < 0.5 * max(curve) and curve[-1] < 0.05
