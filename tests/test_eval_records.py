"""Evaluation records: appended to `<workdir>/eval_records.jsonl` (outside the rotated checkpoint
directories), read back per checkpoint with the records earlier versions wrote in
`checkpoints/<step>/eval.json`; safe against kills and concurrent writers; damage named."""

import json
import multiprocessing
import os

import pytest

from regmix_jax import evaluate


def _record(**changes):
  fields = dict(step=40, role="target", weights="ema", split="test", n_examples=1017,
                epsilon=8 / 255, step_size=2 / 255, accuracy={"clean": 0.5, "pgd20": 0.25},
                seconds={"clean": 1.0, "pgd20": 9.0})
  return evaluate.EvalRecord(**{**fields, **changes})


def _workdir_with_steps(tmp_path, *steps):
  workdir = str(tmp_path)
  for step in steps:
    os.makedirs(os.path.join(workdir, "checkpoints", str(step)))
  return workdir


def test_records_append_and_read_back_in_the_latest_checkpoint(tmp_path):
  workdir = _workdir_with_steps(tmp_path, 20, 40)
  os.makedirs(os.path.join(workdir, "checkpoints", "60.orbax-checkpoint-tmp-1"))  # unfinished
  path = evaluate.records_path(workdir)
  evaluate.append_eval_record(path, _record())
  evaluate.append_eval_record(path, _record(epsilon=16 / 255, accuracy={"pgd20": 0.1}))
  evaluate.append_eval_record(path, _record(step=20))
  evaluate.append_eval_record(path, _record(checkpoint="best"))
  with open(path) as f:  # the layout on disk: one plain record per line
    on_disk = [json.loads(line) for line in f]
  assert [(r["step"], r["epsilon"], r["checkpoint"]) for r in on_disk] == [
      (40, 8 / 255, "checkpoints"), (40, 16 / 255, "checkpoints"), (20, 8 / 255, "checkpoints"),
      (40, 8 / 255, "best")]
  records = evaluate.latest_eval_records(workdir)
  assert records == [_record(), _record(epsilon=16 / 255, accuracy={"pgd20": 0.1})]
  assert evaluate.eval_records(workdir, 40, best=True) == [_record(checkpoint="best")]
  assert evaluate.latest_eval_records(str(tmp_path / "none")) == []


def test_records_outlive_the_checkpoint_directory_and_old_eval_json_is_still_read(tmp_path):
  """Rotation deletes `checkpoints/<step>/`: the records stay. An earlier version's
  `eval.json` inside a checkpoint is read first, then the new file's records."""
  workdir = _workdir_with_steps(tmp_path, 40)
  legacy = evaluate.eval_json_path(workdir, 40)
  with open(legacy, "w") as f:
    json.dump([_record(accuracy={"clean": 0.4}).to_json()], f)
  evaluate.append_eval_record(evaluate.records_path(workdir), _record())
  assert [r.accuracy for r in evaluate.eval_records(workdir, 40)] == [
      {"clean": 0.4}, {"clean": 0.5, "pgd20": 0.25}]
  os.remove(legacy)
  os.rmdir(os.path.dirname(legacy))  # what Orbax's max_to_keep does to an old step
  assert evaluate.eval_records(workdir, 40) == [_record()]


def test_a_line_cut_by_a_kill_is_not_a_record_and_is_replaced_by_the_next_append(tmp_path):
  path = evaluate.records_path(str(tmp_path))
  evaluate.append_eval_record(path, _record())
  with open(path, "ab") as f:  # a writer killed mid-line
    f.write(json.dumps(_record(step=41).to_json()).encode()[:30])
  assert evaluate.read_eval_records(path) == [_record()]
  evaluate.append_eval_record(path, _record(step=42))
  assert [r.step for r in evaluate.read_eval_records(path)] == [40, 42]
  with open(path) as f:
    assert all(line.endswith("}\n") for line in f)


@pytest.mark.parametrize("content, where", [
    (b'{"step": 40, "role"\n', "line 1"),
    (json.dumps(_record().to_json()).encode() + b'\n[1, 2]\n', "line 2"),
])
def test_a_damaged_record_names_the_file_and_line(tmp_path, content, where):
  path = evaluate.records_path(str(tmp_path))
  with open(path, "wb") as f:
    f.write(content)
  with pytest.raises(ValueError, match=f"{path}.*damaged.*{where}.*Move the file aside"):
    evaluate.read_eval_records(path)


def test_a_damaged_legacy_eval_json_names_the_file(tmp_path):
  workdir = _workdir_with_steps(tmp_path, 40)
  with open(evaluate.eval_json_path(workdir, 40), "w") as f:
    f.write('[{"step": 40,')
  with pytest.raises(ValueError, match="eval.json are damaged"):
    evaluate.latest_eval_records(workdir)


def _append_many(path, start):
  for i in range(start, start + 50):
    evaluate.append_eval_record(path, _record(step=i, accuracy={"clean": i / 1000}))


def test_concurrent_appends_from_processes_interleave_whole_records(tmp_path):
  path = evaluate.records_path(str(tmp_path))
  ctx = multiprocessing.get_context("fork")
  workers = [ctx.Process(target=_append_many, args=(path, s)) for s in (0, 1000, 2000)]
  for w in workers:
    w.start()
  for w in workers:
    w.join(60)
  assert [w.exitcode for w in workers] == [0, 0, 0]
  steps = sorted(r.step for r in evaluate.read_eval_records(path))
  assert steps == sorted([*range(50), *range(1000, 1050), *range(2000, 2050)])


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
  # A record written before `dtype`, `checkpoint` and `weights_id` existed.
  old = {k: v for k, v in record.to_json().items()
         if k not in ("dtype", "checkpoint", "weights_id")}
  assert evaluate.EvalRecord.from_json(old) == record
  # Fields a later version adds are ignored when read by this one.
  assert evaluate.EvalRecord.from_json({**record.to_json(), "future": 1}) == record
