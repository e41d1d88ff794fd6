"""The study's report: tables (mean and standard deviation over seeds) and plots, drawn from the
runs' saved metrics (`metrics.jsonl`, `eval_records.jsonl`, stage 1's and stage 5's
JSON), so anyone can redraw them without training. Missing stages leave their rows out.

  python experiments/cifar10_subset/report.py [--workdir_root=runs/cifar10_subset]

Writes experiments/results/cifar10_subset.md (with the hand-written reading of
cifar10_subset.notes.md) and experiments/results/cifar10_subset_*.png.
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from regmix_jax import evaluate  # pylint: disable=wrong-import-position

import stage3_evaluate  # pylint: disable=wrong-import-position
import stage4_overfit  # pylint: disable=wrong-import-position
import stage5_landscape  # pylint: disable=wrong-import-position
import study  # pylint: disable=wrong-import-position

EPS = (2, 4, 8, 12, 16)
ATTACKS = (("clean", "clean"), ("pgd20", "PGD-20"), ("pgd50", "PGD-50"), ("cw20", "C&W-20"))


def epochs(workdir: str) -> list[dict]:
  """Per-epoch records of a run, the last one of each epoch (a resumed run may repeat one)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    by_epoch = {r["epoch"]: r for r in map(json.loads, f) if "eval_pgd10" in r}
  return [by_epoch[e] for e in sorted(by_epoch)]


def test_records(workdir: str) -> list[evaluate.EvalRecord]:
  """Stage 3's records of the run's final checkpoint (test split)."""
  return [r for r in evaluate.latest_eval_records(workdir) if r.split == "test"]


def lookup(records, attack: str, eps: int, n: int | None = None):
  """Accuracy of `attack` at eps/255 (on all test images, or the first `n`); None if not run."""
  n = stage3_evaluate.N_TEST if n is None else n
  for r in records:
    if r.covers([attack], epsilon=eps / 255, n_examples=n):
      return r.accuracy[attack]
  return None


def mean_std(values) -> str:
  values = [100 * v for v in values if v is not None]
  if len(values) < 2:
    return f"{values[0]:.1f} (1 seed)" if values else "–"
  return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}" + (
      "" if len(values) == len(study.SEEDS) else f" ({len(values)} seeds)")


def gather(args) -> dict:
  """Everything the report shows, read from the runs under `args.workdir_root`."""
  runs, overfit = {}, {}
  for label, config in study.METHODS.items():
    for seed in study.SEEDS:
      workdir = study.workdir(args, config, seed)
      if os.path.exists(os.path.join(workdir, "final_eval.json")):  # else train() would train
        runs[(label, seed)] = {"epochs": epochs(workdir), "test": test_records(workdir),
                               **study.train(args, config, seed)}
  for config in stage4_overfit.CONFIGS:
    workdir = study.workdir(args, config, 0, eps=16)
    if os.path.exists(os.path.join(workdir, "final_eval.json")):
      overfit[config] = {"epochs": epochs(workdir), **study.train(args, config, 0, eps=16)}
  return {"runs": runs, "overfit": overfit}


def aa_size(runs) -> int | None:
  """The number of test images AutoAttack ran on (the largest any run has)."""
  sizes = [r.n_examples for run in runs.values() for r in run["test"] if "aa" in r.accuracy]
  return max(sizes) if sizes else None


def tables(g: dict) -> list[str]:
  runs, n_aa = g["runs"], aa_size(g["runs"])
  seeds_of = lambda label: [runs[(label, s)] for s in study.SEEDS if (label, s) in runs]
  lines = []
  if os.path.exists(study.CHOSEN):
    with open(study.CHOSEN) as f:
      chosen = json.load(f)
    lines += ["## Stage 1: RegMix weights on the validation split (seed 0)", "",
              f"Criterion: {chosen['criterion']}. Validation accuracy (%), eps 8/255.", "",
              "| setting | config | method overrides | clean | PGD-10 |", "| --- | --- | --- | --- | --- |"]
    for r in chosen["runs"]:
      tuned = " ".join(o.split("--config.method.")[1] for o in r["method_overrides"])
      lines.append(f"| {r['name'].split('/')[-1]} | {r['config']} | {tuned} | "
                   f"{100 * r['clean']:.1f} | {100 * r['pgd10']:.1f} |")
    lines += ["", "Chosen: " + "; ".join(f"{c}: `{' '.join(o)}`"
                                          for c, o in chosen["overrides"].items()), ""]
  aa_head = f"AA (first {n_aa})" if n_aa and n_aa < stage3_evaluate.N_TEST else "AA"
  lines += ["## Stage 3: test accuracy at eps 8/255 (%, mean ± std over 3 seeds, 1017 images "
            "unless the column says otherwise)", "",
            f"| method | {' | '.join(h for _, h in ATTACKS)} | {aa_head} | "
            "PGD-50 on the AA images | train (min/run) |",
            "| --- " * (len(ATTACKS) + 4) + "|"]
  for label in study.METHODS:
    rs = seeds_of(label)
    if not rs:
      continue
    cells = [mean_std([lookup(r["test"], a, 8) for r in rs]) for a, _ in ATTACKS]
    aa = [lookup(r["test"], "aa", 8, n_aa) for r in rs] if n_aa else []
    paired = [lookup(r["test"], "pgd50", 8, n_aa) for r in rs] if n_aa else []
    cells += [mean_std(aa), mean_std(paired) if n_aa != stage3_evaluate.N_TEST else "(=PGD-50)",
              f"{np.mean([r['wall_seconds'] for r in rs]) / 60:.1f}"]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  swept = sorted({seed for (_, seed), r in runs.items()
                  if lookup(r["test"], "pgd20", EPS[0]) is not None})
  lines += ["", "## Stage 3: PGD-20 test accuracy against eps (%, mean ± std over seeds "
            f"{', '.join(map(str, swept))}, 1017 images; step eps/4)", "",
            "| method | " + " | ".join(f"{e}/255" for e in EPS) + " |", "| --- " * (len(EPS) + 1) + "|"]
  for label in study.METHODS:  # the seeds swept at every eps only
    rs = [r for r in seeds_of(label) if lookup(r["test"], "pgd20", EPS[0]) is not None]
    if rs:
      lines.append(f"| {label} | " + " | ".join(
          mean_std([lookup(r["test"], "pgd20", e) for r in rs]) for e in EPS) + " |")
  if g["overfit"]:
    lines += ["", "## Stage 4: training at eps 16/255 (seed 0; validation PGD-10 at 16/255, %)", "",
              "| method | per epoch | best | final | train acc. on own adv. examples (final) | "
              "collapsed? |", "| --- | --- | --- | --- | --- | --- |"]
    names = {c: m for m, c in study.METHODS.items()}
    for config, o in g["overfit"].items():
      curve = [r["eval_pgd10"] for r in o["epochs"]]
      best, final = max(curve), curve[-1]
      lines.append(f"| {names[config]} | {' '.join(f'{100 * v:.1f}' for v in curve)} | {100 * best:.1f} "
                   f"| {100 * final:.1f} | {100 * o['epochs'][-1].get('train_accuracy', np.nan):.1f} "
                   f"| {'yes' if study.collapsed(curve) else 'no'} |")
  return lines


def plots(g: dict, out_prefix: str) -> list[str]:
  written = []
  runs = g["runs"]
  labels = [m for m in study.METHODS if any((m, s) in runs for s in study.SEEDS)]
  colors = dict(zip(study.METHODS, plt.cm.tab10.colors))
  if labels:  # robust accuracy per epoch
    ncols = 2 if g["overfit"] else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.2), squeeze=False)
    ax = axes[0, 0]
    for label in labels:
      curves = np.array([[100 * r["eval_pgd10"] for r in runs[(label, s)]["epochs"]]
                         for s in study.SEEDS if (label, s) in runs])
      x = np.arange(1, curves.shape[1] + 1)
      ax.plot(x, curves.mean(0), marker="o", label=f"{label} ({len(curves)} seeds)",
              color=colors[label])
      ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.15, color=colors[label])
    ax.set(xlabel="epoch", ylabel="PGD-10 accuracy (%)", xticks=x,
           title="eps 8/255: validation PGD-10 (mean, min-max over seeds)")
    ax.legend(fontsize=8)
    if g["overfit"]:
      ax = axes[0, 1]
      names = {c: m for m, c in study.METHODS.items()}
      for config, o in g["overfit"].items():
        curve = [100 * r["eval_pgd10"] for r in o["epochs"]]
        ax.plot(range(1, len(curve) + 1), curve, marker="o", label=names[config],
                color=colors[names[config]])
      ax.set(xlabel="epoch", ylabel="PGD-10 accuracy at 16/255 (%)", xticks=x,
             title="trained at eps 16/255 (seed 0, validation)")
      ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, out_prefix + "_per_epoch.png"))
  with_eps = [m for m in labels if any(lookup(runs[(m, s)]["test"], "pgd20", 2)
                                       for s in study.SEEDS if (m, s) in runs)]
  if with_eps:  # robust accuracy against eps
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label in with_eps:
      acc = 100 * np.array([[lookup(runs[(label, s)]["test"], "pgd20", e) for e in EPS]
                            for s in study.SEEDS if (label, s) in runs], float)  # None -> nan
      acc = acc[~np.isnan(acc).any(1)]  # the seeds swept at every eps
      ax.errorbar(EPS, acc.mean(0), yerr=acc.std(0, ddof=1) if len(acc) > 1 else None,
                  marker="o", capsize=3, label=label, color=colors[label])
    ax.set(xlabel="eps (/255)", ylabel="PGD-20 accuracy (%)", xticks=EPS,
           title="test PGD-20 accuracy against eps (1017 images; mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, out_prefix + "_eps.png"))
  if os.path.exists(stage5_landscape.OUT):  # loss landscape
    with open(stage5_landscape.OUT) as f:
      land = json.load(f)
    steps = np.linspace(-land["radius"], land["radius"], land["grid"]) * 255
    a, b = np.meshgrid(steps, steps, indexing="ij")
    names = {c: m for m, c in study.METHODS.items()}
    surfaces = {c: np.array(s) for c, s in land["surfaces"].items()}
    top = max(s.max() for s in surfaces.values())
    fig = plt.figure(figsize=(15, 4.4))
    for i, (config, s) in enumerate(surfaces.items()):
      ax = fig.add_subplot(1, 3, i + 1, projection="3d")
      ax.plot_surface(a, b, s, cmap="viridis", vmin=0, vmax=top)
      ax.set(xlabel="adversarial dir. (/255)", ylabel="random dir. (/255)", zlabel="CE loss",
             zlim=(0, top), title=f"{names[config]} (seed 0)")
    ax = fig.add_subplot(1, 3, 3)
    mid = land["grid"] // 2
    for config, s in surfaces.items():
      ax.plot(steps, s[:, mid], label=f"{names[config]}: adversarial", color=colors[names[config]])
      ax.plot(steps, s[mid, :], "--", label=f"{names[config]}: random", color=colors[names[config]])
    ax.set(xlabel="step along the direction (/255)", ylabel="mean CE loss",
           title=f"slices through x ({land['n_images']} validation images)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, out_prefix + "_landscape.png"))
  return written


def _save(fig, path: str) -> str:
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=study.common.DEFAULT_DATA,
                 help="the data path the runs were given (shown in their commands)")
  p.add_argument("--workdir_root", default=os.path.join(study.common.ROOT, "runs", "cifar10_subset"))
  args = p.parse_args()
  args.data = os.path.relpath(os.path.abspath(args.data), study.common.ROOT)
  g = gather(args)
  prefix = os.path.join(study.RESULTS, "cifar10_subset")
  pngs = plots(g, prefix)
  all_runs = list(g["runs"].values()) + list(g["overfit"].values())
  evals = sum(sec for r in g["runs"].values() for rec in r["test"] for sec in rec.seconds.values())
  with open(prefix + ".notes.md") as f:
    notes = f.read().strip()
  lines = ["# The papers' comparison at CPU scale, on the real CIFAR-10 subset", "",
           "Generated by `experiments/cifar10_subset/report.py` from the runs' saved metrics; the "
           "reading is hand-written in `cifar10_subset.notes.md`.", "",
           f"Machine: {os.cpu_count()}-core x86 CPU (this project's dev VM), JAX on CPU with 2 "
           "host devices, no GPU. From `experiments/cifar10_subset/study.py`:",
           "", study.__doc__.split("\n\n")[1].replace("\n", " "), "",
           "Commands (each stage resumable; `run_all.sh` runs them in order):", "", "```bash",
           "bash experiments/cifar10_subset/run_all.sh ../shared/data/cifar10_subset.npz 100",
           "# = stage1_tune.py, stage2_train.py, stage3_evaluate.py --parts=main,",
           "#   stage4_overfit.py, stage5_landscape.py,",
           "#   stage3_evaluate.py --parts=sweep,aa --seeds=0,1,2 --aa_examples=100, report.py",
           "#   (each with --data=../shared/data/cifar10_subset.npz)", "```", "",
           notes, ""]
  lines += tables(g)
  lines += ["", "## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pngs]
  lines += ["", f"Wall time: training {sum(r['wall_seconds'] for r in all_runs) / 60:.0f} min over "
            f"{len(all_runs)} runs (stages 2 and 4; stage 1: "
            f"{_stage1_minutes():.0f} min), test evaluation {evals / 60:.0f} min (stage 3, time "
            "inside the attacks).", "", "<details><summary>Every run's exact command</summary>", "",
            "```bash"] + [r["command"] for r in _stage1_runs() + all_runs] + ["```", "", "</details>"]
  with open(prefix + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def _stage1_runs() -> list[dict]:
  if not os.path.exists(study.CHOSEN):
    return []
  with open(study.CHOSEN) as f:
    return json.load(f)["runs"]


def _stage1_minutes() -> float:
  return sum(r["wall_seconds"] for r in _stage1_runs()) / 60


if __name__ == "__main__":
  main()
