"""`python -m regmix_jax.evaluate` on a trained run: the table, eval.json next to the checkpoint,
AutoAttack on the robust points only giving the same answer as the fixed-shape composition, and
clear errors."""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from regmix_jax import checkpointing, config as config_lib, data, evaluate, methods, models, train
from regmix_jax import train_state as ts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny PGD-AT run trained for one epoch on synthetic 8x8 images."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = config_lib.base_config()
  config.method = methods.method_config("pgd_at")
  config.method.num_steps = 2
  config.data.source = "synthetic"
  config.data.synthetic.update(num_train=128, num_test=40, image_size=8)
  config.data.batch_size = 32
  config.data.eval_batch_size = 16
  config.model.name = "small_cnn"
  config.model.width = 4
  config.num_epochs = 1
  config.optim.schedule = "constant"
  config.eval.attacks = "clean"
  config.checkpoint.async_save = False
  config.ema.enabled = True
  train.train_and_evaluate(config, workdir)
  return workdir, config


def test_evaluate_checkpoint_writes_eval_json_and_aa_matches_the_composition(run):
  workdir, config = run
  record = evaluate.evaluate_checkpoint(workdir, attacks_spec="clean,pgd3,aa", epsilon=16 / 255,
                                        progress=False)
  assert record["n_examples"] == 40 and record["weights"] == "ema"
  acc = record["accuracy"]
  assert acc["clean"] >= acc["pgd3"] and acc["aa"] <= acc["clean"]
  assert acc["aa:apgd-ce"] >= acc["aa:apgd-t"] >= acc["aa:fab-t"] >= acc["aa:square"] == acc["aa"]
  with open(os.path.join(workdir, "checkpoints", str(record["step"]), "eval.json")) as f:
    assert json.load(f)[-1]["accuracy"] == acc
  # The same points through the fixed-shape `attacks.autoattack` inside `eval_step`, at the same
  # position (2) of the list: the same count.
  dataset = data.load_dataset(config.data)
  net = models.get_model("small_cnn", 10, width=4)
  state = ts.create_train_state(config, {"target": net}, dataset.image_shape, 1)
  state, _ = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).restore(state)
  step = jax.jit(functools.partial(evaluate.eval_step, model=net, first_position=2,
                                   attack_list=evaluate.parse_attacks("aa", epsilon=16 / 255)))
  fixed = evaluate.accuracies(data.eval_batches(dataset.test, batch_size=40),
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
