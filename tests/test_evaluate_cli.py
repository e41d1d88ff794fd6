"""`python -m regmix_jax.evaluate` on a trained run: the table, the workdir's records file,
AutoAttack on the robust points only giving the same answer as the fixed-shape composition, and
clear errors."""

import functools
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from regmix_jax import attacks, checkpointing, config as config_lib, cpu, data, evaluate
from regmix_jax import evaluation, methods, models, train
from regmix_jax import train_state as ts

import tiny_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny PGD-AT run trained for one epoch on synthetic 8x8 images."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_runs.tiny_config("pgd_at", **{
      "method.num_steps": 2, "data.synthetic.num_test": 40, "data.synthetic.image_size": 8,
      "data.eval_batch_size": 16, "num_epochs": 1, "eval.attacks": "clean",
      "ema.enabled": True})
  train.train_and_evaluate(config, workdir)
  return workdir, config


def test_evaluate_checkpoint_writes_a_record_and_aa_matches_the_composition(run):
  workdir, config = run
  record = evaluate.evaluate_checkpoint(workdir, attacks_spec="clean,pgd3,aa", epsilon=16 / 255,
                                        progress=False)
  assert record["n_examples"] == 40 and record["weights"] == "ema"
  acc = record["accuracy"]
  assert acc["clean"] >= acc["pgd3"] and acc["aa"] <= acc["clean"]
  assert acc["aa:apgd-ce"] >= acc["aa:apgd-t"] >= acc["aa:fab-t"] >= acc["aa:square"] == acc["aa"]
  # Each of AutoAttack's attacks that ran has its time, within the whole evaluation's.
  ran = [k for k in acc if k.startswith("aa:") and k in record["seconds"]]
  assert "aa:apgd-ce" in ran
  assert 0 < sum(record["seconds"][k] for k in ran) <= record["seconds"]["aa"]
  row = next(r for r in evaluate.format_table(record).splitlines() if r.startswith("aa:apgd-ce"))
  assert len(row.split()) == 3, row  # name, accuracy, seconds
  assert record["path"] == os.path.join(workdir, "eval_records.jsonl")
  with open(record["path"]) as f:
    last = json.loads(f.readlines()[-1])
  assert last["accuracy"] == acc and last["step"] == record["step"]
  assert last["checkpoint"] == "checkpoints" and len(last["weights_id"]) == 8
  # The same points through the fixed-shape `attacks.autoattack` inside `eval_step`, at the same
  # position (2) of the list, with the convolutions the command ran: the same count.
  dataset = data.load_dataset(config.data)
  net = models.get_model("small_cnn", 10, width=4, conv=cpu.choose(config.cpu_convolutions).conv)
  state = ts.create_train_state(config, {"target": net}, dataset.image_shape, 1)
  state, _ = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).restore(state)
  step = jax.jit(functools.partial(evaluation.eval_step, model=net, first_position=2,
                                   attack_list=attacks.parse_attacks("aa", epsilon=16 / 255)))
  fixed = evaluation.accuracies(data.eval_batches(dataset.test, batch_size=40),
                              lambda b: step(state, b))
  np.testing.assert_allclose(fixed["aa"], acc["aa"])


def test_command_line_prints_the_table_and_names_bad_input(run):
  workdir, _ = run
  cmd = [sys.executable, "-m", "regmix_jax.evaluate", f"--workdir={workdir}",
         "--attacks=clean,pgd2", "--n_examples=16", "--epsilon=4/255", "--weights=live"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
  assert "16 test examples" in out and "live weights" in out and "pgd2" in out
  bad = subprocess.run(cmd[:4] + ["--attacks=pgd0"], cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode != 0 and "eval.attacks" in bad.stderr
  missing = subprocess.run(cmd[:3] + [f"--workdir={workdir}/nope"], cwd=ROOT,
                           capture_output=True, text=True)
  assert missing.returncode != 0 and "config.json" in missing.stderr


def _cli(*args, **kwargs):
  return subprocess.run([sys.executable, "-m", "regmix_jax.evaluate", *args], cwd=ROOT,
                        capture_output=True, text=True, **kwargs)


def test_errors_a_user_can_hit_are_one_line_each_not_a_traceback(run, tmp_path):
  workdir, _ = run
  empty = tmp_path / "no_checkpoints"
  empty.mkdir()
  (empty / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
  for args, expected in {(f"--workdir={workdir}", "--step=999"): "No checkpoint at step 999",
                         (f"--workdir={empty}", "--attacks=clean"): "No checkpoint in"}.items():
    result = _cli(*args)
    assert result.returncode != 0, args
    assert expected in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
  # The same errors (caught the same way by the command) in-process, where they are cheaper.
  with pytest.raises(checkpointing.CheckpointError, match="keep_best"):
    evaluate.evaluate_checkpoint(workdir, attacks_spec="clean", best=True, progress=False)
  with pytest.raises(ValueError, match="--epsilon"):
    evaluate.evaluate_checkpoint(workdir, attacks_spec="clean", norm="L2", progress=False)
  with pytest.raises(ValueError, match="roles"):
    evaluate.evaluate_checkpoint(workdir, attacks_spec="clean", role="guide", progress=False)


def test_dtype_flag_evaluates_in_that_precision_and_keeps_the_run_config(run):
  """`--dtype=bfloat16` computes in bfloat16 (the accuracy of a bfloat16 model built by hand)
  without changing the run's config.json."""
  workdir, config = run
  before = open(os.path.join(workdir, "config.json")).read()
  record = evaluate.evaluate_checkpoint(workdir, attacks_spec="clean", dtype="bfloat16",
                                        weights="live", progress=False)
  assert open(os.path.join(workdir, "config.json")).read() == before
  assert record["dtype"] == "bfloat16"
  dataset = data.load_dataset(config.data)
  state = ts.create_train_state(config, {"target": models.get_model("small_cnn", 10, width=4)},
                                dataset.image_shape, 1)
  state, _ = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).restore(state)
  net = models.get_model("small_cnn", 10, width=4, dtype="bfloat16",
                         conv=cpu.choose(config.cpu_convolutions).conv)
  step = jax.jit(functools.partial(evaluation.eval_step, model=net,
                                   attack_list=attacks.parse_attacks("clean", epsilon=0.0)))
  live = state.replace(ema_params=None, ema_batch_stats=None)
  by_hand = evaluation.accuracies(data.eval_batches(dataset.test, batch_size=40),
                                lambda b: step(live, b))["clean"]
  assert record["accuracy"]["clean"] == by_hand
  nets, _, _ = evaluate.restore_state(workdir, config_lib.load_json(
      os.path.join(workdir, "config.json")), 10, dataset.image_shape)
  assert np.dtype(nets["target"].dtype) == np.float32  # the run's eval.dtype, unless --dtype says otherwise


def test_best_flag_evaluates_the_kept_best_checkpoint(tmp_path):
  workdir = str(tmp_path)
  config = config_lib.base_config()
  config.method = methods.method_config("standard")
  config.data.source = "synthetic"
  config.data.synthetic.update(num_train=128, num_test=40, image_size=8)
  config.data.update(batch_size=32, eval_batch_size=16, val_size=32)
  config.model.update(name="small_cnn", width=4)
  config.num_epochs = 2
  config.optim.schedule = "constant"
  config.eval.update(attacks="clean", split="val", num_examples=0)
  config.checkpoint.update(async_save=False, keep_best="clean")
  train.train_and_evaluate(config, workdir)
  best = checkpointing.Checkpointer(os.path.join(workdir, checkpointing.BEST_DIR))
  try:
    best_step, meta = best.latest_step(), best.latest_meta()
  finally:
    best.close()
  record = evaluate.evaluate_checkpoint(workdir, attacks_spec="clean", best=True,
                                        progress=False)
  assert record["step"] == best_step and record["split"] == "val"
  assert record["checkpoint"] == "best"
  assert evaluate.eval_records(workdir, best_step, best=True)[-1].accuracy == record["accuracy"]
  # The kept state scores on the validation split what training measured for it.
  np.testing.assert_allclose(record["accuracy"]["clean"], meta["value"])


# The evaluate command, killed by its own watcher thread after AutoAttack's second attack.
KILL_AFTER_TWO_ATTACKS = """
import os, runpy, sys
workdir = sys.argv[1]
""" + tiny_runs.kill_after_attacks_source(
    'os.path.join(workdir, "eval_state", "*", "*.json")') + """
sys.argv = ["regmix_jax.evaluate", *sys.argv[1 + 1:]]
runpy.run_module("regmix_jax.evaluate", run_name="__main__")
print("finished without being killed")
"""


def test_evaluate_command_killed_during_autoattack_resumes_to_the_same_record(run):
  """SIGKILL of the command after AutoAttack's second attack. A rerun with another `--dtype`
  does not take the float32 state's results (it starts afresh, in its own state); the rerun with
  the same flags resumes, writes the record an uninterrupted run writes, and removes the state."""
  workdir, _ = run
  args = [f"--workdir={workdir}", "--attacks=aa", "--n_examples=16", "--epsilon=16/255"]
  killed = subprocess.run([sys.executable, "-c", KILL_AFTER_TWO_ATTACKS, workdir, *args],
                          cwd=ROOT, capture_output=True, text=True,
                          env=tiny_runs.killable_env({**os.environ, "PYTHONPATH": ROOT}))
  assert killed.returncode == -9, killed.stderr[-2000:]
  states = glob.glob(os.path.join(workdir, "eval_state", "*", "*.json"))
  assert len(states) == 1 and states[0].endswith("_float32.json")
  with open(states[0]) as f:
    assert json.load(f)["run_attacks"] == ["apgd-ce", "apgd-t"]
  bf16 = _cli(*args, "--dtype=bfloat16", check=True)
  assert "Restored state" not in bf16.stdout + bf16.stderr
  with open(states[0]) as f:  # the float32 state is left for its own rerun
    assert json.load(f)["run_attacks"] == ["apgd-ce", "apgd-t"]
  resumed = _cli(*args, check=True)
  assert "Restored state" in resumed.stdout + resumed.stderr
  assert not os.path.exists(states[0]) and not os.path.exists(states[0] + ".x_adv.npz")
  whole = _cli(*args, check=True)
  assert "written to" in resumed.stdout and "written to" in whole.stdout
  assert "AutoAttack version standard, computed in float32" in whole.stdout
  records = [r.to_json() for r in evaluate.latest_eval_records(workdir)]
  assert [r["dtype"] for r in records[-3:]] == ["bfloat16", "float32", "float32"]
  assert records[-2]["accuracy"] == records[-1]["accuracy"]
  assert records[-1]["accuracy"]["aa"] < records[-1]["accuracy"]["aa:apgd-ce"] or \
      records[-1]["accuracy"]["aa"] < 1.0


@pytest.mark.parametrize("flag", ["epsilon", "step_size"])
def test_a_radius_in_pixel_units_is_refused_before_anything_is_recorded(run, flag):
  """`--epsilon=8` (meant 8/255) ran, printed PGD-20 0.00% and recorded it; training refuses
  the same value."""
  workdir, _ = run
  before = evaluate.latest_eval_records(workdir)
  with pytest.raises(ValueError, match=rf"^--{flag}=8 is larger than the whole \[0, 1\] image "
                                       r"range: .* Did you mean 8/255 = 0\.031373\?$"):
    evaluate.evaluate_checkpoint(workdir, attacks_spec="clean,pgd2", n_examples=8,
                                 progress=False, **{flag: 8.0})
  assert evaluate.latest_eval_records(workdir) == before


def test_the_table_is_shown_before_the_record_is_written_and_a_failed_write_keeps_it(
    run, tmp_path):
  """A records file that cannot be written (here: a directory in its place) does not lose the
  evaluation: the table is printed, then the error names the file; exit status 1."""
  workdir, _ = run
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  records = os.path.join(copy, "eval_records.jsonl")
  if os.path.exists(records):
    os.remove(records)
  os.makedirs(records)  # a path that cannot be opened as a file (root ignores file modes)
  out = _cli(f"--workdir={copy}", "--attacks=clean", "--n_examples=8")
  assert out.returncode == 1, out.stderr[-2000:]
  assert "attack  accuracy %" in out.stdout and "clean" in out.stdout
  # The header names AutoAttack's version only when AutoAttack ran.
  assert "computed in float32" in out.stdout and "AutoAttack" not in out.stdout
  assert "could not be recorded in" in out.stderr and "eval_records.jsonl" in out.stderr
  assert "Traceback" not in out.stderr


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "0", "-8/255", "8/0"])
def test_a_radius_that_cannot_be_meant_is_refused_naming_the_flag(text):
  """`--epsilon=nan` and `inf` ran and recorded NaN / Infinity (which strict JSON readers then
  refuse for the whole file); 0 divided by zero later. Each is refused at the flag."""
  for flag in ("epsilon", "step_size"):
    with pytest.raises(ValueError, match=f"--{flag}='?{text}'?: use a (finite positive )?number"):
      evaluate._fraction(text, flag)


@pytest.mark.parametrize("field, value", [("epsilon", float("nan")), ("epsilon", 0.0),
                                          ("step_size", float("inf")), ("step_size", -1.0)])
def test_evaluate_checkpoint_refuses_a_radius_that_cannot_be_meant(run, field, value):
  workdir, _ = run
  with pytest.raises(ValueError, match=f"{field} must be a finite positive number"):
    evaluate.evaluate_checkpoint(workdir, attacks_spec="clean", progress=False,
                                 **{field: value})


def test_a_read_only_workdir_is_said_at_the_start_and_autoattack_saves_no_state(
    run, monkeypatch, capsys):
  """A workdir this user cannot write (a shared, read-only run) still evaluates: the command says
  at once that the result cannot be recorded, and AutoAttack gets no state file to fail on
  after its first attack. (File modes do not stop root, so `os.access` answers no here.)"""
  workdir, _ = run
  seen = {}

  class Stop(Exception):
    pass

  def fake_run_autoattack(*args, **kwargs):
    seen.update(kwargs)
    raise Stop

  monkeypatch.setattr(evaluate.os, "access", lambda *a, **k: False)
  monkeypatch.setattr(evaluate.attacks, "run_autoattack", fake_run_autoattack)
  with pytest.raises(Stop):
    evaluate.evaluate_checkpoint(workdir, attacks_spec="aa", n_examples=8, progress=False)
  assert seen["state_path"] is None
  assert "is not writable: the result will be shown but cannot be recorded" in \
      capsys.readouterr().out


def test_a_few_points_are_not_padded_to_the_whole_eval_batch(run, monkeypatch):
  """`--n_examples=8` with `eval_batch_size` 16 ran a batch of 16 (padding costs what a point
  does: 20 points of a WRN-34-10 cost 500). Now a batch of 8, with the accuracies a padded
  batch of 16 gives."""
  workdir, config = run
  sizes = []
  batches = data.eval_batches
  monkeypatch.setattr(evaluate.data, "eval_batches",
                      lambda *a, **k: sizes.append(k["batch_size"]) or batches(*a, **k))
  few = evaluate.evaluate_checkpoint(workdir, attacks_spec="clean,pgd2", n_examples=8,
                                     epsilon=16 / 255, weights="live", progress=False,
                                     write=False)
  assert sizes == [8, 8]
  dataset = data.load_dataset(config.data)
  net = models.get_model("small_cnn", 10, width=4, conv=cpu.choose(config.cpu_convolutions).conv)
  state = ts.create_train_state(config, {"target": net}, dataset.image_shape, 1)
  state, _ = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).restore(state)
  state = state.replace(ema_params=None, ema_batch_stats=None)
  step = jax.jit(functools.partial(evaluation.eval_step, model=net, attack_list=(
      attacks.parse_attacks("clean,pgd2", epsilon=16 / 255, step_size=4 / 255))))
  padded = evaluation.accuracies(batches(dataset.test, batch_size=16, num_examples=8),
                                 lambda b: step(state, b))
  assert padded == few["accuracy"]


def test_the_bar_moves_only_when_a_batch_result_exists(run, monkeypatch):
  """The bars reached 100% as soon as the work was queued (asynchronous dispatch), then nothing
  moved while it ran. Each update now follows the blocking wait for its batch's result, and
  the first batch is announced as compiling until its call returns (compiled and queued)."""
  workdir, _ = run
  events = []
  block = jax.block_until_ready
  monkeypatch.setattr(evaluate.jax, "block_until_ready",
                      lambda x: events.append("result") or block(x))

  class Bar:
    disable = True  # no clock thread (progress.tick)

    def __init__(self, total=None, desc="", **kwargs):
      events.append(f"bar {desc} of {total}")

    def set_description(self, desc, refresh=True):
      events.append(f"desc {desc}")

    def update(self, n):
      events.append("update")

    def close(self):
      events.append("close")

  monkeypatch.setattr(evaluate.tqdm, "tqdm", Bar)
  evaluate.evaluate_checkpoint(workdir, attacks_spec="clean", n_examples=24, write=False)
  assert events[0] == "bar clean (compiling) of 2" and events[-1] == "close"
  updates = [i for i, e in enumerate(events) if e == "update"]
  assert len(updates) == 2  # (the fetch of the counts blocks again later: not a bar's update)
  # "(compiling)" until the first batch is compiled and queued, then the points and batches.
  assert all(events[i - 2:i] == ["desc clean (24 points in batches of 16)", "result"]
             for i in updates), events


def test_autoattack_is_split_over_the_devices_aa_devices_names_with_the_same_result(
    run, monkeypatch):
  """`aa_devices="all"` hands every local device (4 forced CPU ones here) to run_autoattack and
  gives the record of the default (one device on CPU)."""
  workdir, _ = run
  seen, real = [], attacks.run_autoattack

  def spy(*args, **kwargs):
    seen.append(kwargs.get("devices"))
    return real(*args, **kwargs)

  monkeypatch.setattr(evaluate.attacks, "run_autoattack", spy)
  common = dict(attacks_spec="aa", epsilon=16 / 255, progress=False, write=False, n_examples=24)
  default = evaluate.evaluate_checkpoint(workdir, **common)
  split = evaluate.evaluate_checkpoint(workdir, aa_devices="all", **common)
  assert seen[0] is None and [d.id for d in seen[1]] == [d.id for d in jax.local_devices()]
  assert len(seen[1]) == 4
  assert split["accuracy"] == default["accuracy"]


def test_without_attacks_an_l2_evaluation_runs_autoattack_and_local_data_is_named(run):
  """PGD and C&W are L-inf only: with no attacks given, an L2 evaluation runs clean and
  AutoAttack (the command's default for L-inf stays clean,pgd20,pgd50,cw20,aa); and a run's
  data that cannot be read names the evaluate flags that read local files."""
  workdir, _ = run
  record = evaluate.evaluate_checkpoint(workdir, attacks_spec=None, norm="L2", epsilon=0.5,
                                        n_examples=8, progress=False, write=False)
  assert [k for k in record["accuracy"] if not k.startswith("aa:")] == ["clean", "aa"]
  with pytest.raises(FileNotFoundError, match=r"--data_source=files --data_dir=<directory"):
    evaluate.evaluate_checkpoint(workdir, attacks_spec="clean", data_source="files",
                                 data_dir="/nonexistent/cifar.npz", progress=False, write=False)


def test_ctrl_c_during_an_evaluation_is_one_line_and_exit_130(run):
  workdir, _ = run
  code = textwrap.dedent(f"""
      import sys
      from absl import app
      from regmix_jax import evaluate
      def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
      evaluate.evaluate_checkpoint = interrupted
      evaluate.define_flags()
      sys.argv = ["evaluate", "--workdir={workdir}", "--attacks=clean"]
      app.run(evaluate.main)
  """)
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 130, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert "interrupted" in result.stderr and "the same command resumes it" in result.stderr
