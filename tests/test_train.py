"""End to end: training, resume after `kill -9`, non-finite loss, corrupted checkpoint, CLI errors."""

import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from regmix_jax import checkpointing
from regmix_jax import methods, train

from tiny_runs import killable_env, tiny_config, tiny_fgsm_pgk_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FGSM_PGK = os.path.join(ROOT, "configs", "cifar10", "fgsm_pgk.py")
# A small, fast FGSM-PGK run on synthetic data, as command-line overrides: its per-example
# buffers (reset at epochs 0 and 2) must survive a kill as well as the TrainState.
TINY = tiny_fgsm_pgk_flags(cpu_devices=4, num_train=512, max_to_keep=50)
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
       "PYTHONUNBUFFERED": "1"}


def _cli(workdir, *extra):
  return [sys.executable, "-m", "regmix_jax.main", f"--config={FGSM_PGK}",
          f"--workdir={workdir}", *TINY, *extra]


def _final_state(workdir, item="state"):
  ckpt_dir = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  tree = ocp.StandardCheckpointer().restore(os.path.join(ckpt_dir, str(step), item))
  return step, tree


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  subprocess.run(_cli(workdir), check=True, env=ENV, cwd=ROOT, capture_output=True)
  return workdir


def _interrupt_after_first_checkpoint(workdir, sig):
  """Starts the tiny run and sends `sig` once its step-2 checkpoint exists."""
  proc = subprocess.Popen(_cli(workdir), env=killable_env(ENV), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpt_dir) and any(d.isdigit() and int(d) >= 2 for d in os.listdir(ckpt_dir)):
      break
    time.sleep(0.005)
  os.kill(proc.pid, sig)
  stdout, _ = proc.communicate()
  step_at_stop, _ = _final_state(workdir)
  assert step_at_stop < 3 * 16, "the run finished before it was interrupted"
  return proc.returncode, stdout


def _failure_report(stderr: str) -> str:
  """A failed run's fatal lines (XLA's `F` log lines, C++ aborts, Python's last exception) and
  the end of its stderr: the cause is often far above the thread dumps that close it."""
  fatal = [line for line in stderr.splitlines()
           if re.match(r"F\d{4} |.*(Check failed|terminate called|Fatal Python error|Error:)", line)]
  return "\n".join(["fatal lines:", *fatal[:20], "end of stderr:", stderr[-2000:]])


def _assert_same_run(full, resumed):
  step_full, tree_full = _final_state(full)
  step_resumed, tree_resumed = _final_state(resumed)
  assert step_full == step_resumed == 3 * 16
  _, sample_full = _final_state(full, "sample")
  _, sample_resumed = _final_state(resumed, "sample")
  tree_full, tree_resumed = {**tree_full, **sample_full}, {**tree_resumed, **sample_resumed}
  for key in ("params", "batch_stats", "opt_state", "ema_params", "rng", "prior", "momentum"):
    leaves_a = jax.tree.leaves(tree_full[key])
    leaves_b = jax.tree.leaves(tree_resumed[key])
    assert len(leaves_a) == len(leaves_b) > 0
    for a, b in zip(leaves_a, leaves_b):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=key)
  assert np.abs(np.asarray(sample_full["momentum"])).max() > 0  # the buffers were trained
  records_full, records_resumed = _records(full), _records(resumed)
  assert [r["epoch"] for r in records_resumed] == [1, 2, 3]  # no gap, no duplicate
  for a, b in zip(records_full, records_resumed):
    for k in ("train_loss", "train_accuracy", "eval_clean", "eval_pgd2"):
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=k)


def test_killed_run_resumes_to_the_same_parameters(tmp_path, uninterrupted_run):
  killed = str(tmp_path / "killed")
  returncode, _ = _interrupt_after_first_checkpoint(killed, signal.SIGKILL)
  assert returncode == -signal.SIGKILL
  step_at_kill, _ = _final_state(killed)
  resumed = subprocess.run(_cli(killed), env=ENV, cwd=ROOT, capture_output=True, text=True)
  assert resumed.returncode == 0, _failure_report(resumed.stderr)
  assert f"Resuming from {os.path.join(killed, 'checkpoints')}/{step_at_kill}" in resumed.stdout
  _assert_same_run(uninterrupted_run, killed)


def test_sigterm_saves_a_checkpoint_and_stops_cleanly(tmp_path, uninterrupted_run):
  stopped = str(tmp_path / "stopped")
  returncode, stdout = _interrupt_after_first_checkpoint(stopped, signal.SIGTERM)
  assert returncode == 0 and "Stopped by a signal" in stdout
  step_at_stop, _ = _final_state(stopped)
  resumed = subprocess.run(_cli(stopped), env=ENV, cwd=ROOT, capture_output=True, text=True)
  assert resumed.returncode == 0, _failure_report(resumed.stderr)
  assert f"Resuming from {os.path.join(stopped, 'checkpoints')}/{step_at_stop}" in resumed.stdout
  _assert_same_run(uninterrupted_run, stopped)


def test_cli_resume_with_another_model_fails_in_a_few_lines(tmp_path, uninterrupted_run):
  """The command's failed restore is its error and the changed field, not Orbax's echoes of it
  (dozens of `Event loop is closed` tracebacks without `console.quiet_console`)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(uninterrupted_run, workdir)
  result = subprocess.run(_cli(workdir, "--config.model.width=8"), env=ENV, cwd=ROOT,
                          capture_output=True, text=True)
  assert result.returncode != 0
  assert "model.width: 4 -> 8" in result.stderr
  assert "Event loop is closed" not in result.stderr
  assert len(result.stderr.splitlines()) < 12, result.stderr[-3000:]


def test_training_learns_and_restart_of_finished_run_only_evaluates(tmp_path, capsys):
  config = tiny_config(**{"num_epochs": 3, "data.synthetic.num_train": 512,
                          "data.synthetic.num_test": 128, "data.augment": False,
                          "optim.learning_rate": 0.05})
  config.method = methods.method_config("standard")
  final = train.train_and_evaluate(config, str(tmp_path))
  assert final["clean"] > 0.5  # 10 classes: chance is 0.1
  assert set(final) == {"clean", "pgd2"}
  assert final["pgd2"] <= final["clean"]
  records = _records(str(tmp_path))
  assert [r["epoch"] for r in records] == [1, 2, 3]  # counted as the bar counts them
  again = train.train_and_evaluate(config, str(tmp_path))
  np.testing.assert_allclose(again["clean"], final["clean"])
  assert len(_records(str(tmp_path))) == 3
  out = capsys.readouterr().out
  assert "final (test, all 128; Linf eps 0.03137): clean" in out and "epoch" in out
  assert "(training complete at epoch 3: evaluating it)" in out


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny_config(**{"optim.learning_rate": 1e30, "checkpoint.every_steps": 1,
                          "log_every_steps": 1000})
  with pytest.raises(FloatingPointError, match=r"(at|after) step (\d+)") as error:
    train.train_and_evaluate(config, str(tmp_path))
  bad_step = int(re.search(r"(at|after) step (\d+)", str(error.value)).group(2))
  step, tree = _final_state(str(tmp_path))
  assert 1 <= step < bad_step  # the last checkpoint comes before the step named
  for leaf in jax.tree.leaves(tree["params"]):
    assert np.isfinite(np.asarray(leaf)).all()


def test_corrupted_checkpoint_gets_a_clear_error(tmp_path):
  config = tiny_config(num_epochs=1)
  train.train_and_evaluate(config, str(tmp_path))
  step_dir = os.path.join(str(tmp_path), "checkpoints", str(config.data.synthetic.num_train // 32))
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"(?s)  step 4: Could not restore the checkpoint at .*checkpoints/<step>:"
                           r".*damaged: then move it out of .*checkpoints to"):
    train.train_and_evaluate(config, str(tmp_path))


def test_resuming_with_another_model_leaves_the_saved_config_and_names_the_change(tmp_path):
  """A config that cannot restore the run stops it, naming the changed field, and leaves the
  workdir's config.json (which `evaluate` reads) as the checkpoints were trained with."""
  train.train_and_evaluate(tiny_config(num_epochs=2), str(tmp_path))
  saved = open(os.path.join(str(tmp_path), "config.json")).read()
  with pytest.raises(checkpointing.CheckpointError, match=r"model\.width: 4 -> 8\. Run with") as e:
    train.train_and_evaluate(tiny_config(num_epochs=2, **{"model.width": 8}), str(tmp_path))
  assert open(os.path.join(str(tmp_path), "config.json")).read() == saved
  # Both checkpoints (steps 8 and 4) in one line, the shapes read before any array: the same
  # message for each (not whichever array an Orbax thread met first).
  tried = [line for line in str(e.value).splitlines() if line.startswith("  step")]
  assert len(tried) == 1 and tried[0].startswith("  steps 8, 4: "), str(e.value)
  assert re.search(r"holds arrays of other shapes than this config's \(\d+ of them; "
                   r"state/params/target/bn1/bias: stored \(4,\), this config \(8,\)",
                   tried[0]), tried[0]


def test_resuming_with_a_changed_config_keeps_the_one_before(tmp_path):
  """A finished run resumed with changes: config.json becomes the new config, the one that
  trained the steps before is kept as `config.to_step_<N>.json`, and a later change at the same
  step (the one before trained nothing) keeps it; an unchanged config rewrites nothing."""
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(num_epochs=1), workdir)
  first = json.load(open(os.path.join(workdir, "config.json")))
  train.train_and_evaluate(tiny_config(num_epochs=1), workdir)  # unchanged: nothing kept
  assert sorted(f for f in os.listdir(workdir) if f.startswith("config")) == ["config.json"]
  step = 128 // 32  # the end of epoch 1, where the later runs resume
  # Another evaluation of the finished run (it trains no step), then more epochs.
  train.train_and_evaluate(tiny_config(num_epochs=1, **{"eval.attacks": "clean"}), workdir)
  assert json.load(open(os.path.join(workdir, f"config.to_step_{step}.json"))) == first
  assert json.load(open(os.path.join(workdir, "config.json")))["eval"]["attacks"] == "clean"
  train.train_and_evaluate(tiny_config(num_epochs=2), workdir)
  assert json.load(open(os.path.join(workdir, f"config.to_step_{step}.json"))) == first
  assert json.load(open(os.path.join(workdir, "config.json")))["num_epochs"] == 2
  assert [r["epoch"] for r in _records(workdir)] == [1, 2]


def test_resuming_with_another_data_layout_is_refused(tmp_path):
  train.train_and_evaluate(tiny_config(num_epochs=1), str(tmp_path))
  config = tiny_config(num_epochs=2, **{"data.batch_size": 64})
  with pytest.raises(checkpointing.CheckpointError, match=r"batch_size: checkpoint 32, now 64"):
    train.train_and_evaluate(config, str(tmp_path))


def test_missing_dataset_error(tmp_path):
  config = tiny_config(**{"data.source": "files", "data.dir": str(tmp_path / "nowhere")})
  with pytest.raises(FileNotFoundError, match="nowhere"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.parametrize("flag,message", [
    ("--config.method.name=pgd_att", "method.name"),
    ("--config.model.name=resnet19", "model.name"),
    ("--config.data.batch_size=many", "batch_size"),
])
def test_cli_errors_name_the_field(tmp_path, flag, message):
  result = subprocess.run(_cli(str(tmp_path), flag), env=ENV, cwd=ROOT, capture_output=True,
                          text=True)
  assert result.returncode != 0
  # One line, naming the field: no traceback (a value of the wrong type included).
  assert result.stderr.startswith("regmix_jax: ") and message in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]


def test_keep_best_keeps_the_best_validation_epoch(tmp_path):
  """`checkpoint.keep_best`: the state of the epoch whose validation score was highest is kept
  in `<workdir>/best/` (ties: the later epoch), beside the final one."""
  config = tiny_config(**{"num_epochs": 3, "data.val_size": 32, "eval.split": "val",
                          "eval.attacks": "clean", "eval.num_examples": 0,
                          "checkpoint.keep_best": "clean"})
  train.train_and_evaluate(config, str(tmp_path))
  records = _records(str(tmp_path))
  scores = [r["eval_clean"] for r in records]
  best_epoch = max(range(len(scores)), key=lambda e: (scores[e], e))  # from 0 here
  best = checkpointing.Checkpointer(os.path.join(str(tmp_path), checkpointing.BEST_DIR))
  try:
    meta = best.latest_meta()
    assert best.all_steps() == [(best_epoch + 1) * records[0]["step"]]
  finally:
    best.close()
  assert meta["epoch"] == best_epoch + 1 and meta["metric"] == "clean" and meta["split"] == "val"
  np.testing.assert_allclose(meta["value"], scores[best_epoch])
