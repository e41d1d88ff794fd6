"""The checkpoint-evaluation command, and the `eval.json` records it writes.

  python -m regmix_jax.evaluate --workdir=RUN [--step=N] --attacks=clean,pgd20,pgd50,cw20,aa \
      [--n_examples=N] [--epsilon=8/255]

evaluates the run's latest (or step N) checkpoint with its EMA weights (`--weights=live` for the
trained ones), prints a table and appends the result to `eval.json` in the checkpoint's directory
(`RUN/checkpoints/<step>/eval.json`, one `EvalRecord` per evaluation). Attack names as
`attacks.parse_attacks`. Single-process. The evaluation steps it maps over the devices are the
training loop's (`evaluation.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Iterable, Mapping

import numpy as np
import tqdm
from absl import app, flags

from regmix_jax import checkpointing, config as config_lib, data, methods, models, parallel
from regmix_jax import runtime, train_state
from regmix_jax.attacks import parse_attacks
from regmix_jax.evaluation import accuracies, autoattack_flags, correct_step, eval_step

EVAL_JSON = "eval.json"


@dataclasses.dataclass(frozen=True)
class EvalRecord:
  """One evaluation of one checkpoint, as a line of `checkpoints/<step>/eval.json` (a JSON list).

  step: the checkpoint's step. role: the model evaluated ("target", "guide"). weights: "ema" or
  "live". split: "test" or "val". n_examples: the first N examples of the split. epsilon,
  step_size: the attacks' radius and PGD/C&W step. accuracy: {attack name: fraction}; AutoAttack
  adds the robust accuracy after each of its attacks as "aa:<attack>". seconds: {attack: wall s}.
  """

  step: int
  role: str
  weights: str
  split: str
  n_examples: int
  epsilon: float
  step_size: float
  accuracy: Mapping[str, float]
  seconds: Mapping[str, float]

  def covers(self, attacks: Iterable[str], *, epsilon: float, n_examples: int,
             split: str = "test") -> bool:
    """Whether this record holds every one of `attacks` at this radius, size and split."""
    return (self.split == split and self.n_examples == n_examples
            and abs(self.epsilon - epsilon) < 1e-9 and set(attacks) <= set(self.accuracy))

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, record: Mapping[str, Any]) -> "EvalRecord":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in names})


def eval_json_path(workdir: str, step: int) -> str:
  """Where the records of `workdir`'s checkpoint `step` live."""
  return os.path.join(workdir, "checkpoints", str(step), EVAL_JSON)


def read_eval_records(path: str) -> list[EvalRecord]:
  """The records of an `eval.json` ([] when there is none yet)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [EvalRecord.from_json(r) for r in json.load(f)]


def append_eval_record(path: str, record: EvalRecord) -> None:
  """Adds `record` to `path`'s list; the file is replaced whole (written, then renamed), so a
  kill mid-write leaves the previous list."""
  records = [r.to_json() for r in read_eval_records(path)] + [record.to_json()]
  partial = path + ".partial"
  with open(partial, "w") as f:
    json.dump(records, f, indent=2)
  os.replace(partial, path)


def latest_eval_records(workdir: str) -> list[EvalRecord]:
  """The records of `workdir`'s latest checkpoint ([] when it has none)."""
  steps = checkpointing.saved_steps(os.path.join(workdir, "checkpoints"))
  return read_eval_records(eval_json_path(workdir, max(steps))) if steps else []


def _fraction(text: str, flag: str) -> float:
  """`"8/255"` or `"0.03"` -> float; errors name the flag."""
  try:
    num, _, den = text.partition("/")
    value = float(num) / (float(den) if den else 1.0)
  except ValueError:
    raise ValueError(f"--{flag}={text!r}: use a number or a fraction such as 8/255.") from None
  if value < 0:
    raise ValueError(f"--{flag} must be >= 0, got {text}.")
  return value


def restore_state(workdir: str, config, num_classes: int, image_shape, *,
                  step: int | None = None):
  """`(models by role, TrainState, step)` of a run's checkpoint (default: the latest), built from
  the run's `config` (`config.load_json`); raises CheckpointError naming what is there."""
  nets = models.build_models(config, methods.get_method(config.method.name).roles, num_classes)
  state = train_state.create_train_state(config, nets, image_shape, steps_per_epoch=1)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None or step not in ckpt.all_steps():
      raise checkpointing.CheckpointError(
          f"No checkpoint {'' if step is None else f'at step {step} '}in {ckpt.directory} "
          f"(steps there: {ckpt.all_steps() or 'none'}).")
    state, _ = ckpt.restore(state, step=step)
  finally:
    ckpt.close()
  return nets, state, int(step)


def evaluate_checkpoint(workdir: str, *, attacks_spec: str, step: int | None = None,
                        n_examples: int = 0, epsilon: float | None = None,
                        step_size: float | None = None, weights: str = "ema",
                        role: str = "target", split: str = "", data_dir: str = "",
                        progress: bool = True) -> dict:
  """Evaluates a trained run's checkpoint; returns the `EvalRecord` written to `eval.json`, as a
  dict, with its "path".

  `epsilon` defaults to the run's `eval.epsilon`; `step_size` to the run's `eval.step_size`
  scaled by `epsilon / eval.epsilon` (2/255 at 8/255). `weights`: "ema" (the run's EMA weights
  when it kept them, else the live ones) or "live". `data_dir` replaces the run's `data.dir`
  (for a run trained elsewhere). Attacks run one at a time, each compiled once.
  """
  config = config_lib.load_json(os.path.join(workdir, "config.json"))
  if data_dir:
    config.data.dir = data_dir
  if split:
    config.eval.split = split
  if weights not in ("ema", "live"):
    raise ValueError(f"--weights must be 'ema' or 'live', got {weights!r}.")
  method = methods.get_method(config.method.name)
  if role not in method.roles:
    raise ValueError(f"--role={role!r}: method {config.method.name!r} trains the roles "
                     f"{', '.join(method.roles)}.")
  epsilon = config.eval.epsilon if epsilon is None else epsilon
  if step_size is None:
    step_size = config.eval.step_size * epsilon / config.eval.epsilon
  attack_list = parse_attacks(attacks_spec, epsilon=epsilon, step_size=step_size)
  config_lib.validate(config)

  dataset = data.load_dataset(config.data)
  nets, state, step = restore_state(workdir, config, dataset.num_classes, dataset.image_shape,
                                    step=step)
  if weights == "live":
    state = state.replace(ema_params=None, ema_batch_stats=None)
  used = "ema" if state.ema_params is not None else "live"

  data_parallel = parallel.DataParallel(config.parallel)
  device_state = data_parallel.put_state(state)
  split_data = dataset.eval_split(config.eval.split)
  n = len(split_data.y) if n_examples <= 0 else min(n_examples, len(split_data.y))
  batch_size = config.data.eval_batch_size
  accuracy, seconds = {}, {}

  def flags_fn(attack, position):
    fn = data_parallel.map(functools.partial(correct_step, model=nets[role], role=role,
                                             attack=attack, position=position),
                           donate_state=False, batch_outputs=(True,))
    put = data_parallel.put_batch
    return lambda batch: data_parallel.get_batch(fn(device_state, put(batch)))[0]

  def batches_of(indices, desc):
    # Few robust points: a smaller batch (a power of two times the device count, so at most a
    # few sizes compile) instead of padding to `eval_batch_size`.
    size = data_parallel.num_devices
    while size < min(len(indices), batch_size):
      size *= 2
    size = min(size, batch_size)
    batches = data.eval_batches(split_data, batch_size=size, indices=indices)
    for i, batch in enumerate(tqdm.tqdm(batches, total=data.num_eval_batches(len(indices), size),
                                        desc=desc, disable=not progress, leave=False)):
      yield indices[i * size:(i + 1) * size], batch

  for position, (name, attack) in enumerate(attack_list):
    t0 = time.time()
    if name == "aa":  # attack by attack on the points still robust (official evaluation order)
      clean = np.zeros(n, bool)
      clean_fn = flags_fn(None, position)
      for index, batch in batches_of(np.arange(n), "aa/clean"):
        clean[index] = clean_fn(batch)[:len(index)]
      parts = {}
      robust = autoattack_flags(
          lambda a, p=position: flags_fn(a, p),
          lambda idx: batches_of(idx, "aa"), clean, epsilon=epsilon,
          on_attack=lambda part, r: parts.__setitem__(part, float(r.mean())))
      accuracy[name], seconds[name] = float(robust.mean()), time.time() - t0
      # Robust accuracy after each of AutoAttack's attacks (cumulative, as the official log).
      accuracy.update({f"aa:{k}": v for k, v in parts.items()})
      continue
    fn = data_parallel.map(functools.partial(eval_step, model=nets[role], role=role,
                                             attack_list=((name, attack),),
                                             first_position=position),
                           donate_state=False, per_device_outputs=True)
    batches = tqdm.tqdm(data.eval_batches(split_data, batch_size=batch_size, num_examples=n),
                        total=data.num_eval_batches(n, batch_size), desc=name,
                        disable=not progress, leave=False)
    accuracy.update(accuracies(batches, lambda b: fn(device_state, data_parallel.put_batch(b)),
                               fetch=data_parallel.host_sum))
    seconds[name] = time.time() - t0

  record = EvalRecord(step=int(step), role=role, weights=used, split=config.eval.split,
                      n_examples=n, epsilon=epsilon, step_size=step_size, accuracy=accuracy,
                      seconds=seconds)
  path = eval_json_path(workdir, step)
  append_eval_record(path, record)
  return {**record.to_json(), "path": path}


def format_table(record: Mapping) -> str:
  """The evaluation record as a fixed-width table (accuracy in percent, seconds)."""
  rows = [(name, f"{100 * acc:.2f}",
           f"{record['seconds'][name]:.1f}" if name in record["seconds"] else "")
          for name, acc in record["accuracy"].items()]
  width = max(len("attack"), *(len(r[0]) for r in rows))
  lines = [f"{'attack':<{width}}  accuracy %  seconds"]
  lines += [f"{a:<{width}}  {b:>10}  {c:>7}" for a, b, c in rows]
  return "\n".join(lines)


def main(argv) -> None:
  """The `python -m regmix_jax.evaluate` command (flags defined in `define_flags`)."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  config = config_lib.load_json(os.path.join(f.workdir, "config.json"))
  runtime.configure_cpu_for(config)
  record = evaluate_checkpoint(
      f.workdir, attacks_spec=f.attacks, step=f.step, n_examples=f.n_examples,
      epsilon=None if f.epsilon is None else _fraction(f.epsilon, "epsilon"),
      step_size=None if f.step_size is None else _fraction(f.step_size, "step_size"),
      weights=f.weights, role=f.role, split=f.split, data_dir=f.data_dir)
  print(f"{f.workdir}: step {record['step']}, {record['role']} ({record['weights']} weights), "
        f"{record['n_examples']} {record['split']} examples, eps {record['epsilon']:.5f}")
  print(format_table(record))
  print(f"written to {record['path']}")


def define_flags() -> None:
  """The command's flags (defined only when it runs as a program, not on import)."""
  flags.DEFINE_string("workdir", None, "A training run's workdir (holds config.json, checkpoints).")
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
  flags.DEFINE_string("attacks", "clean,pgd20,pgd50,cw20,aa", "Comma-separated attack names.")
  flags.DEFINE_integer("n_examples", 0, "Evaluate the first N examples of the split (0: all).")
  flags.DEFINE_string("epsilon", None, "L-inf radius, e.g. 8/255 (default: the run's).")
  flags.DEFINE_string("step_size", None, "PGD/C&W step (default: the run's, scaled with eps).")
  flags.DEFINE_enum("weights", "ema", ["ema", "live"], "EMA weights (when kept) or live ones.")
  flags.DEFINE_string("role", "target", "Which model to evaluate (D2R: target or guide).")
  flags.DEFINE_string("split", "", "test or val (default: the run's eval.split).")
  flags.DEFINE_string("data_dir", "", "Replaces the run's data.dir.")
  flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
