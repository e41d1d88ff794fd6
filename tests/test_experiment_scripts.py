"""The CIFAR-10-subset study's scripts: a missing data file stops each stage at once with a
message naming the path and the fix (before any run starts or JAX loads), and the
catastrophic-overfitting rule of the report."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = os.path.join(ROOT, "experiments", "cifar10_subset")
STAGES = ("stage1_tune", "stage2_train", "stage3_evaluate", "stage4_overfit", "stage5_landscape")


@pytest.mark.parametrize("stage", STAGES)
def test_missing_data_names_the_path_and_the_flag(stage, tmp_path):
  missing = tmp_path / "nowhere" / "cifar10_subset.npz"
  result = subprocess.run(
      [sys.executable, os.path.join(STUDY, f"{stage}.py"), f"--data={missing}",
       f"--workdir_root={tmp_path / 'runs'}"], capture_output=True, text=True, timeout=60)
  assert result.returncode == 1
  assert f"No data at {missing}" in result.stderr and "--data=" in result.stderr
  assert not (tmp_path / "runs").exists()  # nothing started


def test_collapse_rule():
  sys.path.insert(0, STUDY)
  try:
    import study  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(STUDY)
  assert study.collapsed([0.20, 0.25, 0.03])  # below half the best and under 5%
  assert not study.collapsed([0.20, 0.25, 0.12])  # a drop, not a collapse
  assert not study.collapsed([0.02, 0.03, 0.03])  # never robust: nothing collapsed
