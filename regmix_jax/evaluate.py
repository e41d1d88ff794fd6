"""Robust-accuracy evaluation: clean, FGSM, PGD-k, C&W-k and AutoAttack, jitted, with per-sample
stop; and the command line that evaluates a trained run's checkpoint.

Attack names (`config.eval.attacks`, `--attacks`, comma-separated): `clean`, `fgsm`, `pgd<K>`
(PGD-K on cross-entropy), `cw<K>` (PGD-K on the C&W margin), `aa` (AutoAttack "standard":
APGD-CE, APGD-T, FAB-T, Square), or one of AutoAttack's attacks alone (`apgd-ce`, `apgd-dlr`,
`apgd-t`, `fab-t`, `square`, official settings). FGSM/PGD/C&W use eps `eval.epsilon`, step
`eval.step_size` (FGSM: step = eps), one uniform random start, and a sample stops moving once it
is misclassified (REFERENCE.md, "Evaluation protocol").

  python -m regmix_jax.evaluate --workdir=RUN [--step=N] --attacks=clean,pgd20,pgd50,cw20,aa \
      [--n_examples=N] [--epsilon=8/255]

evaluates the run's latest (or step N) checkpoint with its EMA weights (`--weights=live` for the
trained ones), prints a table and appends the result to `eval.json` in the checkpoint's directory
(`RUN/checkpoints/<step>/eval.json`). Single-process.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from regmix_jax import attacks, losses, rng


AUTOATTACK_PARTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")


def _autoattack_images(logits_fn, x, labels, key, *, epsilon):
  return attacks.autoattack(logits_fn, x, labels, key, epsilon=epsilon)[0]


def parse_attacks(spec: str, *, epsilon: float = 8 / 255, step_size: float = 2 / 255
                  ) -> tuple[tuple[str, Callable | None], ...]:
  """`"clean,pgd10,cw20"` -> ((name, attack or None for clean), ...); errors name `eval.attacks`."""
  parsed = []
  for name in [s.strip() for s in spec.split(",") if s.strip()]:
    match = re.fullmatch(r"(pgd|cw)(\d+)", name)
    if name == "clean":
      fn = None
    elif name == "fgsm":
      fn = functools.partial(attacks.fgsm, epsilon=epsilon, step_size=epsilon, early_stop=True)
    elif name == "aa":
      fn = functools.partial(_autoattack_images, epsilon=epsilon)
    elif name in AUTOATTACK_PARTS:
      fn = functools.partial(attacks.AUTOATTACK_ATTACKS[name], epsilon=epsilon)
    elif match and int(match.group(2)) > 0:
      attack = attacks.pgd if match.group(1) == "pgd" else attacks.cw_linf
      fn = functools.partial(attack, epsilon=epsilon, step_size=step_size,
                             num_steps=int(match.group(2)), early_stop=True)
    else:
      raise ValueError(f"Config field `eval.attacks`: unknown attack {name!r} in {spec!r}. "
                       "Use a comma-separated list of clean, fgsm, pgd<K>, cw<K> (e.g. pgd20), "
                       f"aa, {', '.join(AUTOATTACK_PARTS)}.")
    parsed.append((name, fn))
  if not parsed:
    raise ValueError("Config field `eval.attacks` is empty; use e.g. 'clean,pgd10'.")
  return tuple(parsed)


def eval_step(state, batch, key=None, *, model, attack_list, role: str = "target",
              first_position: int = 0, axis_name: str | None = None) -> dict[str, jax.Array]:
  """Correct counts of `role` under each attack, on this device's examples (summed over devices).

  The model runs in inference mode on `state.eval_variables(role)` (EMA weights when EMA is on).
  `batch` as in `train_step`; rows with `mask == False` (padding) count for nothing. The attack at
  position i of `attack_list` draws its random starts from `(first_position + i, example index)`
  (so evaluating a list one attack at a time draws the same numbers). Returns
  {name: number correct, "count": number of real examples}, this device's only: under a mapping
  (`axis_name` given) each value has a leading axis of 1 and is not summed over devices (map with
  `per_device_outputs=True`, sum with `DataParallel.host_sum`). Attacks do data-dependent work
  (AutoAttack skips attacks when no point is left robust, Square stops once all are fooled), so
  devices finish at different times; a collective here would keep the early ones waiting.
  """
  mask = batch["mask"].astype(jnp.float32)
  counts = {"count": mask.sum()}
  for position, (name, attack) in enumerate(attack_list):
    correct = _correct_under(state, batch, key, model=model, attack=attack, role=role,
                             position=first_position + position)
    counts[name] = (correct * mask).sum()
  return counts if axis_name is None else jax.tree.map(lambda v: v[None], counts)


def _correct_under(state, batch, key, *, model, attack, role, position) -> jax.Array:
  """`[b]` float: 1 where `role` classifies the attacked example correctly. Each attack has its
  own random starts: per-example keys from (its position, the example's index)."""
  variables = state.eval_variables(role)
  logits_fn = lambda x: model.apply(variables, x, train=False)
  key = rng.stream(state.rng if key is None else key, rng.EVAL)
  keys = rng.example_keys(jax.random.fold_in(key, position), batch["index"])
  x = batch["image"].astype(jnp.float32) / 255.0
  x_eval = x if attack is None else attack(logits_fn, x, batch["label"], keys)
  return losses.correct(logits_fn(x_eval), batch["label"])


def correct_step(state, batch, key=None, *, model, attack, role: str = "target",
                 position: int = 0, axis_name: str | None = None) -> tuple[jax.Array]:
  """`(correct [b] bool,)` per example under one attack (keys as `eval_step` at `position`);
  map it with `batch_outputs=(True,)`. Used to run AutoAttack's attacks on the robust points
  only (`autoattack_flags`)."""
  del axis_name  # per-example output: nothing to reduce
  return (_correct_under(state, batch, key, model=model, attack=attack, role=role,
                         position=position) > 0,)


def autoattack_flags(step_for, batches_of, clean_correct: np.ndarray, *, epsilon: float,
                     version="standard", on_attack=None) -> np.ndarray:
  """AutoAttack as the official `run_standard_evaluation`: each attack of `version` runs only on
  the points still robust, gathered into full batches (so on a robust model the later attacks
  cost a fraction of a pass over the data).

  Args:
    step_for: `attack fn -> (batch -> correct [b] bool numpy)`, e.g. a mapped `correct_step`.
    batches_of: `indices -> iterable of (indices in the batch, batch)`.
    clean_correct: `[N]` bool, correct on the clean inputs.
    on_attack: optional `callback(name, robust [N])` after each attack.

  Returns:
    `[N]` bool robust flags; equal per point to `attacks.autoattack` with the same keys (attack i
    of the list uses `fold_in(example key, i)`, as there).
  """
  robust = np.asarray(clean_correct, bool).copy()
  for i, name in enumerate(attacks.autoattack_version(version)):
    part = attacks.AUTOATTACK_ATTACKS[name]
    fn = step_for(lambda f, x, y, k, part=part, i=i: part(f, x, y, rng.fold(k, i),
                                                          epsilon=epsilon))
    for index, batch in batches_of(np.nonzero(robust)[0]):
      robust[index] &= fn(batch)[:len(index)]
    if on_attack is not None:
      on_attack(name, robust)
  return robust


def accuracies(batches: Iterable[Mapping[str, np.ndarray]], step_fn,
               fetch: Callable = jax.device_get) -> dict[str, float]:
  """Runs `step_fn(batch) -> counts` over `batches`; returns accuracy per attack (fractions).
  `fetch` brings one batch's counts to the host (for a mapped `eval_step`:
  `DataParallel.host_sum`); every element of a fetched count is summed."""
  total: dict[str, float] = {}
  pending = [step_fn(b) for b in batches]  # dispatched asynchronously, then fetched
  for counts in pending:
    for k, v in fetch(counts).items():
      total[k] = total.get(k, 0.0) + float(np.sum(v))
  count = max(total.pop("count", 0.0), 1.0)
  return {k: v / count for k, v in total.items()}


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
  from regmix_jax import checkpointing, methods, train, train_state  # pylint: disable=g-import-not-at-top
  nets = train.build_models(config, methods.get_method(config.method.name).roles, num_classes)
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
  """Evaluates a trained run's checkpoint; returns the record written to `eval.json`.

  `epsilon` defaults to the run's `eval.epsilon`; `step_size` to the run's `eval.step_size`
  scaled by `epsilon / eval.epsilon` (2/255 at 8/255). `weights`: "ema" (the run's EMA weights
  when it kept them, else the live ones) or "live". `data_dir` replaces the run's `data.dir`
  (for a run trained elsewhere). Attacks run one at a time, each compiled once.
  """
  from regmix_jax import config as config_lib, data, methods, parallel  # pylint: disable=g-import-not-at-top

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

  par = parallel.DataParallel(config.parallel)
  dstate = par.put_state(state)
  split_data = dataset.test if config.eval.split == "test" else dataset.val
  n = len(split_data.y) if n_examples <= 0 else min(n_examples, len(split_data.y))
  batch_size = config.data.eval_batch_size
  accuracy, seconds = {}, {}

  def flags_fn(attack, position):
    fn = par.map(functools.partial(correct_step, model=nets[role], role=role, attack=attack,
                                   position=position), donate_state=False, batch_outputs=(True,))
    return lambda batch: par.get_batch(fn(dstate, par.put_batch(batch)))[0]

  def batches_of(indices, desc):
    # Few robust points: a smaller batch (a power of two times the device count, so at most a
    # few sizes compile) instead of padding to `eval_batch_size`.
    size = par.num_devices
    while size < min(len(indices), batch_size):
      size *= 2
    size = min(size, batch_size)
    batches = data.eval_batches(split_data, batch_size=size, indices=indices)
    for i, batch in enumerate(tqdm.tqdm(batches, total=data.num_eval_batches(len(indices), size),
                                        desc=desc, disable=not progress, leave=False)):
      yield indices[i * size:(i + 1) * size], batch

  for position, (name, attack) in enumerate(attack_list):
    if name == "aa":  # attack by attack on the points still robust (official evaluation order)
      t0 = time.time()
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
    fn = par.map(functools.partial(eval_step, model=nets[role], role=role,
                                   attack_list=((name, attack),), first_position=position),
                 donate_state=False, per_device_outputs=True)
    t0 = time.time()
    correct = count = 0.0
    batches = data.eval_batches(split_data, batch_size=batch_size, num_examples=n)
    for batch in tqdm.tqdm(batches, total=data.num_eval_batches(n, batch_size), desc=name,
                           disable=not progress, leave=False):
      counts = par.host_sum(fn(dstate, par.put_batch(batch)))
      correct += float(counts[name])
      count += float(counts["count"])
    accuracy[name], seconds[name] = correct / max(count, 1.0), time.time() - t0

  record = {"step": int(step), "role": role, "weights": used, "split": config.eval.split,
            "n_examples": n, "epsilon": epsilon, "step_size": step_size, "accuracy": accuracy,
            "seconds": seconds}
  path = os.path.join(workdir, "checkpoints", str(step), "eval.json")
  previous = []
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
  with open(path, "w") as f:
    json.dump(previous + [record], f, indent=2)
  record["path"] = path
  return record


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
  """The `python -m regmix_jax.evaluate` command (flags defined in `_define_flags`)."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from regmix_jax import config as config_lib, runtime  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  config = config_lib.load_json(os.path.join(f.workdir, "config.json"))
  runtime.configure_cpu_devices(runtime.cpu_device_count(config), config.cpu_ynn_fusion_type)
  record = evaluate_checkpoint(
      f.workdir, attacks_spec=f.attacks, step=f.step, n_examples=f.n_examples,
      epsilon=None if f.epsilon is None else _fraction(f.epsilon, "epsilon"),
      step_size=None if f.step_size is None else _fraction(f.step_size, "step_size"),
      weights=f.weights, role=f.role, split=f.split, data_dir=f.data_dir)
  print(f"{f.workdir}: step {record['step']}, {record['role']} ({record['weights']} weights), "
        f"{record['n_examples']} {record['split']} examples, eps {record['epsilon']:.5f}")
  print(format_table(record))
  print(f"written to {record['path']}")


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
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
  from absl import app as _app  # pylint: disable=g-import-not-at-top
  _define_flags()
  _app.run(main)
