"""What a workdir survives: a second writer (a real second process) stops at once naming the
holder, and a killed holder leaves no stale lock; evaluation records outlive checkpoint
rotation; convert never overwrites a run; a fresh run never inherits a deleted run's metrics."""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from regmix_jax import checkpointing, config as config_lib, convert, evaluate, train
from regmix_jax import workdir as workdir_lib
from regmix_jax.models import torch_weights

import tiny_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  return tiny_runs.tiny_config("fgsm_rs", **{
      "num_epochs": 1, "data.synthetic.num_train": 64, "data.synthetic.num_test": 16,
      "data.synthetic.image_size": 8, "data.batch_size": 16, "data.eval_batch_size": 16,
      "eval.attacks": "clean", "checkpoint.max_to_keep": 2, **overrides})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished one-epoch run (4 steps)."""
  workdir = str(tmp_path_factory.mktemp("finished"))
  train.train_and_evaluate(_config(), workdir)
  return workdir


def _copy(workdir, tmp_path):
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  return copy


HOLDER = textwrap.dedent("""
    import sys, time
    from regmix_jax import workdir
    with workdir.exclusive(sys.argv[1], "training"):
      print("held", flush=True)
      time.sleep(300)
""")


def test_a_second_writer_stops_at_once_naming_the_holder_and_a_kill_leaves_no_stale_lock(
    finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, workdir], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT})
  try:
    assert holder.stdout.readline().strip() == "held"
    who = rf"in use by pid {holder.pid} on {socket.gethostname()} \(training"
    second = subprocess.run(
        [sys.executable, "-m", "regmix_jax.main", "--config=configs/quickstart.py",
         f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1, second.stderr[-2000:]
    assert "Traceback" not in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert re.search(who + r".*another --workdir", second.stderr)
    with pytest.raises(workdir_lib.WorkdirError, match=who):
      train.train_and_evaluate(_config(num_epochs=2), workdir)
    with pytest.raises(workdir_lib.WorkdirError, match=who):
      convert.write_run(workdir, {}, {}, model="small_cnn", num_classes=10, overwrite=True)
    assert checkpointing.saved_steps(os.path.join(workdir, "checkpoints")) == [4]
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with workdir_lib.exclusive(workdir, "training"):  # the kernel released the killed holder's lock
    pass


def test_evaluation_records_outlive_checkpoint_rotation(finished, tmp_path):
  """max_to_keep=2: training on deletes `checkpoints/4/`; its record is still read."""
  workdir = _copy(finished, tmp_path)
  record = evaluate.evaluate_checkpoint(workdir, attacks_spec="clean", progress=False)
  assert record["step"] == 4
  train.train_and_evaluate(_config(num_epochs=3), workdir)
  assert checkpointing.saved_steps(os.path.join(workdir, "checkpoints")) == [8, 12]
  kept = evaluate.eval_records(workdir, 4)
  assert [r.accuracy for r in kept] == [record["accuracy"]]
  assert kept[0].weights_id == record["weights_id"]
  assert evaluate.latest_eval_records(workdir) == []  # step 12 has none yet
  later = evaluate.evaluate_checkpoint(workdir, attacks_spec="clean", progress=False)
  assert later["weights_id"] != record["weights_id"]
  assert [r.step for r in evaluate.read_eval_records(evaluate.records_path(workdir))] == [4, 12]


def _npz_of(workdir, tmp_path):
  """The finished run's target weights as a PyTorch state_dict in an .npz (what convert reads)."""
  config = config_lib.load_json(os.path.join(workdir, "config.json"))
  _, state, _ = evaluate.restore_state(workdir, config, 10, (8, 8, 3))
  path = str(tmp_path / "weights.npz")
  np.savez(path, **torch_weights.to_torch(state.params["target"], state.batch_stats["target"]))
  return path


def test_convert_never_overwrites_a_run(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  before = {p: open(p, "rb").read() for p in glob.glob(os.path.join(workdir, "**"),
                                                       recursive=True) if os.path.isfile(p)}
  weights = _npz_of(workdir, tmp_path)
  command = [sys.executable, "-m", "regmix_jax.convert", f"--checkpoint={weights}",
             "--model=small_cnn", "--width=4", "--num_classes=10", f"--workdir={workdir}",
             "--data_source=synthetic"]
  refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
  assert "already holds a run (checkpoints, config.json" in refused.stderr
  # Refused before the weights are read (they took 10 s for a WRN-34-10): a missing file is not
  # what it reports.
  first = subprocess.run([*command, "--checkpoint=missing.pt"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
  assert first.returncode == 1 and "already holds a run" in first.stderr, first.stderr
  assert "a new --workdir, or --overwrite" in refused.stderr
  after = {p: open(p, "rb").read() for p in glob.glob(os.path.join(workdir, "**"),
                                                      recursive=True) if os.path.isfile(p)}
  assert after == before  # nothing touched
  moved = subprocess.run(command + ["--overwrite"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
  assert moved.returncode == 0, moved.stderr[-2000:]
  # convert logs like train and evaluate (Orbax's INFO lines were ~60), and the command it
  # suggests is sized for a CPU.
  assert not re.search(r"^I\d{4} ", moved.stderr, re.M), moved.stderr[:2000]
  assert "--attacks=clean,pgd20 --n_examples=100" in moved.stdout
  (aside,) = glob.glob(os.path.join(workdir, "replaced.*"))
  assert f"Moved the run that was in {workdir} to {aside}" in moved.stdout
  for path, content in before.items():  # the old run, whole, in the replaced. folder
    if not path.endswith(workdir_lib.LOCK_FILE):
      assert open(path.replace(workdir, aside, 1), "rb").read() == content
  assert checkpointing.saved_steps(os.path.join(workdir, "checkpoints")) == [0]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["method"]["name"] == "standard"


def test_a_fresh_run_never_inherits_a_deleted_runs_metrics(finished, tmp_path, caplog):
  workdir = _copy(finished, tmp_path)
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  train.train_and_evaluate(_config(**{"optim.learning_rate": 0.05}), workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["epoch"] for r in records] == [1]
  assert records[0]["train_learning_rate"] == pytest.approx(0.05)
  (aside,) = glob.glob(os.path.join(workdir, "previous_run.*"))
  assert sorted(os.listdir(aside)) == ["config.json", "final_eval.json", "metrics.jsonl",
                                       "tensorboard"]
  with open(os.path.join(aside, "metrics.jsonl")) as f:
    assert json.loads(f.readline())["train_learning_rate"] != pytest.approx(0.05)
  out = caplog.text
  assert "has no checkpoint but holds another run's outputs" in out and aside in out
  # Resuming that run (its checkpoints are there) moves nothing.
  train.train_and_evaluate(_config(**{"optim.learning_rate": 0.05}), workdir)
  assert len(glob.glob(os.path.join(workdir, "previous_run.*"))) == 1


@pytest.mark.parametrize("layout, message", [
    ("empty", "--workdir is empty"),
    ("file", "is a file, not a directory"),
    ("under a file", "lies under .*which is a file"),
    ("checkpoints is a file", "checkpoints is a file where the run keeps a directory"),
])
def test_a_workdir_that_cannot_hold_a_run_is_refused_before_anything_is_built(
    tmp_path, layout, message):
  """Each was a traceback, one of them only at the first save after an epoch of training."""
  workdir = {"empty": "", "file": tmp_path / "f", "under a file": tmp_path / "f" / "run",
             "checkpoints is a file": tmp_path / "run"}[layout]
  if layout in ("file", "under a file"):
    (tmp_path / "f").write_text("")
  if layout == "checkpoints is a file":
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("")
  with pytest.raises(workdir_lib.WorkdirError, match=message):
    train.train_and_evaluate(_config(), str(workdir))
