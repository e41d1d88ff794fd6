"""`eval.json`: the records the evaluate command appends and the experiment scripts read back."""

import json
import os

from regmix_jax import evaluate


def _record(**changes):
  fields = dict(step=40, role="target", weights="ema", split="test", n_examples=1017,
                epsilon=8 / 255, step_size=2 / 255, accuracy={"clean": 0.5, "pgd20": 0.25},
                seconds={"clean": 1.0, "pgd20": 9.0})
  return evaluate.EvalRecord(**{**fields, **changes})


def test_records_append_and_read_back_in_the_latest_checkpoint(tmp_path):
  workdir = str(tmp_path)
  for step in (20, 40):
    os.makedirs(os.path.join(workdir, "checkpoints", str(step)))
  os.makedirs(os.path.join(workdir, "checkpoints", "60.orbax-checkpoint-tmp-1"))  # unfinished
  path = evaluate.eval_json_path(workdir, 40)
  evaluate.append_eval_record(path, _record())
  evaluate.append_eval_record(path, _record(epsilon=16 / 255, accuracy={"pgd20": 0.1}))
  with open(path) as f:  # the layout on disk: a JSON list of plain records
    on_disk = json.load(f)
  assert [r["epsilon"] for r in on_disk] == [8 / 255, 16 / 255]
  assert on_disk[0]["accuracy"] == {"clean": 0.5, "pgd20": 0.25}
  assert not [p for p in os.listdir(os.path.dirname(path)) if p != "eval.json"]
  records = evaluate.latest_eval_records(workdir)
  assert records == [_record(), _record(epsilon=16 / 255, accuracy={"pgd20": 0.1})]
  assert evaluate.latest_eval_records(str(tmp_path / "none")) == []


def test_covers_names_attacks_radius_size_split_and_precision():
  record = _record()
  assert record.covers(["clean", "pgd20"], epsilon=8 / 255, n_examples=1017)
  assert not record.covers(["pgd50"], epsilon=8 / 255, n_examples=1017)
  assert not record.covers(["clean"], epsilon=4 / 255, n_examples=1017)
  assert not record.covers(["clean"], epsilon=8 / 255, n_examples=100)
  assert not record.covers(["clean"], epsilon=8 / 255, n_examples=1017, split="val")
  bf16 = _record(dtype="bfloat16")
  assert not bf16.covers(["clean"], epsilon=8 / 255, n_examples=1017)  # asks for float32
  assert bf16.covers(["clean"], epsilon=8 / 255, n_examples=1017, dtype="bfloat16")
  # A record written before `dtype` existed was computed in float32.
  old = {k: v for k, v in record.to_json().items() if k != "dtype"}
  assert evaluate.EvalRecord.from_json(old).dtype == "float32"
  # Fields a later version adds are ignored when read by this one.
  assert evaluate.EvalRecord.from_json({**record.to_json(), "future": 1}) == record
