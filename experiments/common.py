"""What the experiment scripts share: one CLI training run per workdir, resumable and skipped
when finished, so a stopped experiment picks up where it was."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "cifar10_subset.npz")


def require_data(path: str) -> None:
  if not os.path.isfile(path):
    sys.exit(f"No data at {path}: pass --data=<path to cifar10_subset.npz> (it lies in "
             "../shared/data/ beside this project; see the README there).")


def run_cli(workdir_root: str, name: str, config: str, overrides: list[str]) -> dict:
  """Trains `configs/<config>.py` with `overrides` in `<workdir_root>/<name>` (log beside it),
  unless its `final_eval.json` exists; returns the final accuracies and the command."""
  workdir = os.path.join(workdir_root, name)
  final = os.path.join(workdir, "final_eval.json")
  command = [sys.executable, "-m", "regmix_jax.main", f"--config=configs/{config}.py",
             f"--workdir={workdir}", *overrides]
  if not os.path.exists(final):
    os.makedirs(os.path.dirname(workdir), exist_ok=True)  # `name` may hold a subfolder
    print("running:", " ".join(command[1:]), flush=True)
    with open(os.path.join(workdir_root, f"{name}.log"), "w") as log:
      subprocess.run(command, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  with open(final) as f:
    result = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  shown = shlex.join(command[1:]).replace(ROOT + os.sep, "")
  # From the workdir's first write (config.json) to the final evaluation's.
  wall = os.path.getmtime(final) - os.path.getmtime(os.path.join(workdir, "config.json"))
  return {"name": name, "config": config, "overrides": overrides, **result,
          "train_images_per_sec": sum(r["images_per_sec"] for r in records) / len(records),
          "wall_seconds": wall, "command": "python " + shown}
