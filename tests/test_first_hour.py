"""What a new user meets first: radii written as fractions on the command line, TensorBoard's
curves on one step axis, bars that move with results and say when they compile, epochs counted
from 1 everywhere, a run's data path that holds from any directory."""

import json
import os
import subprocess
import sys
import time

import pytest

from regmix_jax import config as config_lib, data, evaluate, progress, reporting, train

import tiny_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fractions_become_decimals_only_in_config_values():
  argv = ["prog", "--config=configs/quickstart.py", "--config.method.epsilon=8/255",
          "--config.method.step_size=2.5/255", "--config.eval.attacks=clean,pgd10",
          "--workdir=runs/8/255"]
  out = config_lib.fraction_arguments(argv)
  assert out[2] == f"--config.method.epsilon={8 / 255!r}"
  assert out[3] == f"--config.method.step_size={2.5 / 255!r}"
  assert out[4:] == argv[4:]  # not a fraction; not a config value
  # A zero denominator: named, not absl's "could not convert string to float: '8/0'".
  with pytest.raises(ValueError, match=r"^--config\.eval\.epsilon=8/0: the fraction divides by "
                                       r"zero\. Write the radius as the papers do, e\.g\. 8/255\.$"):
    config_lib.fraction_arguments([*argv, "--config.eval.epsilon=8/0"])


def test_a_fraction_override_reaches_the_config_on_the_command_line(tmp_path):
  """`--config.method.epsilon=8/255` was refused by absl ("could not convert string to float");
  it now reaches validation as 8/255 (here 300/255, which validation refuses naming its
  decimal: the proof that the fraction was read, in a command that stops before training)."""
  result = subprocess.run(
      [sys.executable, "-m", "regmix_jax.main", "--config=configs/quickstart.py",
       f"--workdir={tmp_path / 'run'}", "--config.method.epsilon=300/255"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-2000:]
  assert f"`method.epsilon` = {300 / 255:g} is larger than the whole [0, 1]" in result.stderr
  assert not os.path.exists(tmp_path / "run")  # refused before the workdir was made


class _Bar:
  """A tqdm stand-in recording its descriptions and moves into `events` (shared)."""
  events: list = []

  def __init__(self, total=None, desc="", initial=0, **kwargs):
    self.desc, self.total, self.n = desc, total, initial
    self.descs = [desc]
    _Bar.events.append(("bar", self))

  def update(self, n=1):
    self.n += n
    if n:
      _Bar.events.append(("update", self, self.n))

  def set_description(self, desc, refresh=True):
    self.desc = desc
    self.descs.append(desc)

  def __getattr__(self, name):
    return lambda *a, **k: None


def _record_bars_and_waits(monkeypatch):
  """Replaces train's bars by `_Bar` and records `jax.block_until_ready` calls on a value in
  `_Bar.events`, so that a bar's moves can be checked against the results waited for."""
  _Bar.events = []
  monkeypatch.setattr(train.tqdm, "tqdm", _Bar)
  wait = train.jax.block_until_ready

  def recorded(x):
    if x is not None:
      _Bar.events.append(("result", x))
    return wait(x)
  monkeypatch.setattr(train.jax, "block_until_ready", recorded)


def test_evaluation_curves_share_the_training_curves_step_axis(tmp_path, monkeypatch):
  """`eval/*` was logged at epoch + 1 while `train/*` is at the global step, so the evaluation
  curves sat squashed at the left edge. Both on the global step now, the epoch a scalar."""
  logged = []
  monkeypatch.setattr(reporting.TensorBoard, "scalars",
                      lambda self, step, values, prefix="": logged.append((prefix, step,
                                                                           dict(values))))
  _record_bars_and_waits(monkeypatch)
  config = tiny_runs.tiny_config("fgsm_rs", **{
      "num_epochs": 2, "data.synthetic.num_train": 64, "data.synthetic.num_test": 16,
      "data.synthetic.image_size": 8, "data.batch_size": 16, "data.eval_batch_size": 16,
      "eval.attacks": "clean", "log_every_steps": 1})
  train.train_and_evaluate(config, str(tmp_path / "run"))
  train_steps = [step for prefix, step, _ in logged if prefix == "train/"]
  evals = [(step, values) for prefix, step, values in logged if prefix == "eval/"]
  assert train_steps == list(range(1, 9))
  assert [(step, values["epoch"]) for step, values in evals] == [(4, 1), (8, 2)]
  assert all("clean" in values for _, values in evals)
  bars = [e[1] for e in _Bar.events if e[0] == "bar"]
  evaluating = [b for b in bars if b.desc == "evaluating"]  # the per-epoch evaluation had none
  assert [(b.total, b.n) for b in evaluating] == [(1, 1)] * 2
  assert evaluating[0].descs == ["evaluating (compiling)", "evaluating"]  # first batch only
  assert evaluating[1].descs == ["evaluating"]


def test_epochs_count_from_1_and_bars_move_only_with_results(tmp_path, monkeypatch, capsys):
  """The per-epoch line said `epoch=0` under a bar saying "epoch 1/2"; the training bar reached
  100% as steps were queued (asynchronous dispatch) while they still ran."""
  _record_bars_and_waits(monkeypatch)
  eval_batch_sizes = []
  eval_batches = train.data.eval_batches
  monkeypatch.setattr(train.data, "eval_batches", lambda *a, **k: (
      eval_batch_sizes.append(k["batch_size"]), eval_batches(*a, **k))[1])
  config = tiny_runs.tiny_config("fgsm_rs", **{
      "num_epochs": 2, "data.synthetic.num_train": 64, "data.synthetic.num_test": 16,
      "data.synthetic.image_size": 8, "data.batch_size": 16, "data.eval_batch_size": 500,
      "eval.attacks": "clean", "log_every_steps": 100})
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  lines = [line for line in out.splitlines() if line.startswith("epoch=")]
  assert [line.split()[:2] for line in lines] == [["epoch=1", "step=4"], ["epoch=2", "step=8"]]
  records = reporting.MetricsLog(os.path.join(workdir, "metrics.jsonl"), 4).records
  assert [(r["epoch"], r["step"]) for r in records] == [(1, 4), (2, 8)]
  epochs = [e[1] for e in _Bar.events if e[0] == "bar" and e[1].desc.startswith("epoch")]
  assert [b.desc for b in epochs] == ["epoch 1/2", "epoch 2/2"]
  assert epochs[0].descs[:2] == ["epoch 1/2", "epoch 1/2 (compiling the train step)"]
  assert epochs[1].descs == ["epoch 2/2"]
  # Every move of a training bar comes after as many step results were waited for.
  for bar in epochs:
    results = 0
    start = _Bar.events.index(("bar", bar))
    for kind, what, *position in _Bar.events[start:]:
      if kind == "bar" and what is not bar:
        break
      results += kind == "result"
      if kind == "update" and what is bar:
        assert position[0] <= results, "the bar moved ahead of the steps' results"
    assert bar.n == bar.total == 4
  # 16 test images are evaluated in a batch of 16, not padded to data.eval_batch_size (500).
  assert eval_batch_sizes == [16, 16]


def test_evaluation_batches_are_no_larger_than_the_examples_need():
  assert data.eval_batch_size(20, 500, 2) == 20
  assert data.eval_batch_size(21, 500, 2) == 22  # rounded up to the device count
  assert data.eval_batch_size(1017, 500, 4) == 500
  assert data.eval_batch_size(0, 500, 2) == 2


def test_a_metrics_file_counting_epochs_from_0_is_renumbered_on_resume(tmp_path):
  """Workdirs written before epochs were counted from 1: the records are renumbered when the
  run resumes, and the resumed epochs are not written twice."""
  config = tiny_runs.tiny_config("fgsm_rs", **{
      "num_epochs": 1, "data.synthetic.num_train": 64, "data.synthetic.num_test": 16,
      "data.synthetic.image_size": 8, "data.batch_size": 16, "data.eval_batch_size": 16,
      "eval.attacks": "clean"})
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    (record,) = [json.loads(line) for line in f]
  with open(path, "w") as f:  # as the earlier code wrote it
    f.write(json.dumps(dict(record, epoch=0)) + "\n")
  config.num_epochs = 2  # more epochs: the run resumes
  train.train_and_evaluate(config, workdir)
  with open(path) as f:
    assert [(r["epoch"], r["step"]) for r in map(json.loads, f)] == [(1, 4), (2, 8)]
  # Records without steps, or counting from 1, are left as they are.
  other = tmp_path / "m.jsonl"
  other.write_text('{"epoch": 0}\n{"epoch": 1, "step": 4}\n')
  assert [r["epoch"] for r in reporting.MetricsLog(str(other), 4).records] == [0, 1]
  assert other.read_text() == '{"epoch": 0}\n{"epoch": 1, "step": 4}\n'


def test_config_json_records_the_data_dir_absolute_so_evaluate_runs_from_anywhere(
    tmp_path, monkeypatch):
  """A run trained with `--config.data.dir=data.npz` (relative) stored that relative path, and
  `evaluate` from another directory failed without naming `--data_dir`."""
  home = tmp_path / "project"
  home.mkdir()
  monkeypatch.chdir(home)
  config = tiny_runs.tiny_config("fgsm_rs", **{"num_epochs": 1, "eval.attacks": "clean",
                                               "data.batch_size": 20, "data.eval_batch_size": 8})
  tiny_runs.cifar_npz_config(home)  # writes project/data.npz
  config.data.update(source="files", name="cifar10", dir="data.npz")
  workdir = str(home / "run")
  train.train_and_evaluate(config, workdir)
  saved = config_lib.load_json(os.path.join(workdir, "config.json"))
  assert saved.data.dir == str(home / "data.npz")
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  record = evaluate.evaluate_checkpoint(workdir, attacks_spec="clean", progress=False,
                                        write=False)
  assert record["n_examples"] == 10
  os.rename(home / "data.npz", home / "moved.npz")
  with pytest.raises(FileNotFoundError, match=r"data.dir=.*data.npz.*pass --data_dir=<path>"):
    evaluate.evaluate_checkpoint(workdir, attacks_spec="clean", progress=False, write=False)


@pytest.mark.parametrize("command, flags", [
    ("regmix_jax.main", ["--config", "--workdir"]),
    ("regmix_jax.evaluate", ["--workdir", "--attacks", "--n_examples", "--epsilon", "--norm"]),
    ("regmix_jax.convert", ["--checkpoint", "--model", "--num_classes", "--workdir"]),
])
def test_help_shows_the_usage_and_main_flags_and_exits_0(command, flags):
  """`--help` printed "Try --helpfull to get a list of all flags." and exited 1."""
  result = subprocess.run([sys.executable, "-m", command, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"python -m {command}" in result.stdout
  for flag in flags:
    assert f"\n  {flag}: " in result.stdout, flag


def test_the_summary_table_fits_in_100_columns_and_keeps_every_value():
  """FGSM-PGK's table was about 200 columns wide and wrapped in a terminal."""
  names = ["train_loss", "train_accuracy", "train_clean_accuracy", "train_learning_rate",
           "train_mse", "train_kl_forward", "train_kl_backward", "images_per_sec", "eval_clean",
           "eval_pgd10", "eval_pgd20"]
  records = [{"epoch": e, "step": 8 * e, **{n: 0.125 * (i + 1) for i, n in enumerate(names)}}
             for e in range(1, 4)]
  table = reporting.summary_table(records)
  assert max(len(line) for line in table.splitlines()) <= 100
  for name in names:  # every column once, each block with the epochs
    assert sum(line.split().count(name) for line in table.splitlines()) == 1
  blocks = table.split("\n\n")
  assert len(blocks) > 1 and all(b.startswith("epoch") for b in blocks)
  assert [line.split()[0] for line in blocks[-1].splitlines()[2:]] == ["1", "2", "3"]
  assert "12.50" in table and "137.50" in table  # accuracies in percent


def test_a_ticking_bar_redraws_while_waiting_and_stops_when_told():
  """One long batch (PGD-20 on 100 points of a WRN-34-10 on CPU: 4 min) showed a frozen bar; the
  bar's clock now moves while the host waits."""
  class Bar:
    disable = False
    refreshes = 0

    def refresh(self):
      self.refreshes += 1

  bar = Bar()
  with progress.ticking(bar, every=0.01):
    time.sleep(0.2)
  seen = bar.refreshes
  assert seen >= 5
  time.sleep(0.05)
  assert bar.refreshes == seen  # stopped with the block
  bar = Bar()
  bar.disable = True
  with progress.ticking(bar, every=0.01):
    time.sleep(0.05)
  assert bar.refreshes == 0


def test_ctrl_c_outside_the_training_loop_exits_at_once_in_one_line(tmp_path):
  """Ctrl-C while tfds downloaded printed a 90-line traceback, then the process stayed 186 s
  while the downloader's threads retried. Now one line and exit status 130 at once."""
  child = (
      "import sys, threading, time\n"
      "from regmix_jax import main, train\n"
      "def interrupted(config, workdir):\n"
      "  threading.Thread(target=time.sleep, args=(60,)).start()  # as tfds' download threads\n"
      "  raise KeyboardInterrupt\n"
      "train.train_and_evaluate = interrupted\n"
      f"sys.argv = ['regmix_jax.main', '--config=configs/quickstart.py', "
      f"'--workdir={tmp_path / 'run'}']\n"
      "main.run()\n")
  start = time.monotonic()
  result = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True,
                          text=True, timeout=45)
  assert time.monotonic() - start < 30  # not the 60 s the thread would keep it
  assert result.returncode == 130, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [
      "regmix_jax: interrupted. Checkpoints already in --workdir, if any, are kept: the same "
      "command resumes from them."]


def test_the_final_lines_say_which_points_and_radius_the_numbers_are_on(tmp_path, capsys):
  """The per-epoch eval_* columns used the first eval.num_examples points, the last epoch all of
  them, and the table did not say so; the final line did not give the radius."""
  config = tiny_runs.tiny_config("fgsm_rs", **{
      "num_epochs": 2, "data.synthetic.num_train": 64, "data.synthetic.num_test": 16,
      "data.synthetic.image_size": 8, "data.batch_size": 16, "data.eval_batch_size": 16,
      "eval.attacks": "clean", "eval.num_examples": 8})
  train.train_and_evaluate(config, str(tmp_path / "run"))
  out = capsys.readouterr().out
  assert ("(eval_* of the epochs before the last: the first 8 test examples, eval.num_examples; "
          "the last epoch: all 16)") in out
  assert "final (test, all 16; Linf eps 0.03137): clean " in out
