"""Evaluation records and AutoAttack's threat models: a record names its norm, version and
warnings; records written before those fields read as L-inf "standard"; records for another norm
or radius are appended beside, never replacing, each other; `covers` tells them apart."""

import json
import os

import pytest

from regmix_jax import attacks, evaluate, train

import tiny_runs


def _record(**changes):
  fields = dict(step=40, role="target", weights="ema", split="test", n_examples=100,
                epsilon=8 / 255, step_size=2 / 255, accuracy={"clean": 0.5, "aa": 0.2},
                seconds={"clean": 1.0, "aa": 9.0})
  return evaluate.EvalRecord(**{**fields, **changes})


def test_old_records_read_as_linf_standard():
  old = {k: v for k, v in _record().to_json().items()
         if k not in ("norm", "version", "warnings")}
  record = evaluate.EvalRecord.from_json(old)
  assert (record.norm, record.version, record.warnings) == ("Linf", "standard", ())
  assert record.covers(["clean", "aa"], epsilon=8 / 255, n_examples=100)


def test_records_for_other_norms_and_versions_are_kept_apart(tmp_path):
  path = evaluate.records_path(str(tmp_path))
  linf = _record()
  l2 = _record(epsilon=0.5, norm="L2", accuracy={"clean": 0.5, "aa": 0.3},
               warnings=("there are 3 points with zero gradient! ...",))
  plus = _record(version="plus", accuracy={"clean": 0.5, "aa": 0.1})
  for r in (linf, l2, plus):
    evaluate.append_eval_record(path, r)
  with open(path) as f:
    on_disk = [json.loads(line) for line in f]
  assert [(r["norm"], r["version"], r["accuracy"]["aa"]) for r in on_disk] == [
      ("Linf", "standard", 0.2), ("L2", "standard", 0.3), ("Linf", "plus", 0.1)]
  assert evaluate.read_eval_records(path) == [linf, l2, plus]
  assert l2.covers(["aa"], epsilon=0.5, n_examples=100, norm="L2")
  assert not l2.covers(["aa"], epsilon=0.5, n_examples=100)  # default norm Linf
  assert not linf.covers(["aa"], epsilon=8 / 255, n_examples=100, version="plus")
  assert plus.covers(["aa"], epsilon=8 / 255, n_examples=100, version="plus")
  assert plus.covers(["clean"], epsilon=8 / 255, n_examples=100)  # version: AutoAttack only


def test_attack_names_with_another_norm():
  parsed = dict(attacks.parse_attacks("clean,aa,apgd-ce,fab", epsilon=0.5, norm="L2",
                                      version="plus"))
  assert parsed["aa"].keywords == {"epsilon": 0.5, "norm": "L2", "version": "plus"}
  assert parsed["apgd-ce"].keywords == {"epsilon": 0.5, "norm": "L2"}
  with pytest.raises(ValueError, match="L-inf attack"):
    attacks.parse_attacks("clean,pgd20", epsilon=0.5, norm="L2")


def test_evaluate_checkpoint_runs_autoattack_in_another_norm(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_runs.tiny_config("pgd_at", **{
      "method.num_steps": 1, "data.synthetic.num_train": 64, "data.synthetic.num_test": 16,
      "data.synthetic.image_size": 8, "data.eval_batch_size": 16, "num_epochs": 1,
      "eval.attacks": "clean"})
  train.train_and_evaluate(config, workdir)
  with pytest.raises(ValueError, match="needs --epsilon"):
    evaluate.evaluate_checkpoint(workdir, attacks_spec="clean,aa", norm="L2", progress=False)
  record = evaluate.evaluate_checkpoint(workdir, attacks_spec="clean,aa", norm="L2",
                                        epsilon=0.5, progress=False)
  assert (record["norm"], record["version"], record["epsilon"]) == ("L2", "standard", 0.5)
  acc = record["accuracy"]
  assert acc["aa"] <= acc["aa:apgd-ce"] <= acc["clean"]
  assert [k for k in acc if k.startswith("aa:")] == [
      "aa:apgd-ce", "aa:apgd-t", "aa:fab-t", "aa:square"]
  # The resumable state is removed once the record holds the result.
  state_dir = os.path.join(workdir, evaluate.STATE_DIR, f"checkpoints_{record['step']}")
  assert os.path.isdir(state_dir) and not os.listdir(state_dir)
  assert evaluate.read_eval_records(record["path"])[-1].norm == "L2"
