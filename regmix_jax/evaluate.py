"""The checkpoint-evaluation command, and the evaluation records it writes.

  python -m regmix_jax.evaluate --workdir=RUN [--step=N] --attacks=clean,pgd20,pgd50,cw20,aa \
      [--n_examples=N] [--epsilon=8/255] [--norm=Linf|L2|L1] [--version=standard|plus|rand]

evaluates the run's latest (or step N) checkpoint with its EMA weights (`--weights=live` for the
trained ones), prints a table, then appends the result to `RUN/eval_records.jsonl` (one
`EvalRecord` per line, naming its step, the weights' hash, norm, version and radius). The file
lives outside the checkpoint directories, which rotation deletes; it is only ever appended to,
under a file lock (evaluations may run side by side, and beside training). Records of earlier
versions, in `RUN/checkpoints/<step>/eval.json`, are still read. Attack names as
`attacks.parse_attacks`. Single-process. The evaluation steps it maps over the devices are the
training loop's (`evaluation.py`); `aa` runs `attacks.run_autoattack` (the official evaluation:
each attack on the points still robust), resumable: its state is saved after each attack under
`RUN/eval_state/` and removed once the record is written; a state made for another evaluation
(other weights, dtype, points or settings) is refused.
"""

from __future__ import annotations

USAGE = """Evaluates a trained run's checkpoint (or one `regmix_jax.convert` wrote) with PGD, C&W
and AutoAttack, prints a table and appends it to RUN/eval_records.jsonl:

  python -m regmix_jax.evaluate --workdir=RUN --attacks=clean,pgd20,aa --n_examples=500

AutoAttack costs about 2,000 forward-backward passes per still-robust point: a few hundred
points on a CPU, the full test set on a GPU. Killed, the same command resumes it. A run that
`convert --robustbench=NAME` wrote is evaluated in its entry's threat model, beside the
leaderboard's figures. Flags, records and versions: docs/evaluation.md."""

import dataclasses
import fcntl
import functools
import json
import math
import os
import sys
import time
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
import tqdm
from absl import app, flags

from regmix_jax import attacks, checkpointing, config as config_lib, console, cpu, data, evaluation
from regmix_jax import methods, models, parallel, rng, robustbench, train_state
from regmix_jax import progress as progress_lib  # `progress` is evaluate_checkpoint's argument
from regmix_jax.attacks.autoattack import VERSIONS as AUTOATTACK_VERSIONS

# Where a workdir's evaluation records go, and (read only) where earlier versions wrote them.
RECORDS_FILE, EVAL_JSON = "eval_records.jsonl", "eval.json"
# AutoAttack's resumable states, under the workdir (not in a checkpoint, which rotation deletes).
STATE_DIR = "eval_state"


@dataclasses.dataclass(frozen=True)
class EvalRecord:
  """One evaluation of one checkpoint, as a line of `checkpoints/<step>/eval.json` (a JSON list).

  step: the checkpoint's step. role: the model evaluated ("target", "guide"). weights: "ema" or
  "live". split: "test" or "val". n_examples: the first N examples of the split. epsilon,
  step_size: the attacks' radius and PGD/C&W step. accuracy: {attack name: fraction}; AutoAttack
  adds the robust accuracy after each of its attacks as "aa:<attack>". seconds: {attack: wall s}
  (AutoAttack's own attacks' too, as "aa:<attack>"; those it skipped have none).
  norm: the threat model of `epsilon` ("Linf", "L2", "L1"). version: AutoAttack's version.
  warnings: AutoAttack's check warnings (`attacks.checks`). dtype: the precision the model
  computed in (`eval.dtype` or `--dtype`). checkpoint: "checkpoints" or "best" (the directory of
  the checkpoint). weights_id: a hash of the weights evaluated (`checkpointing.fingerprint`).
  Records written before these fields existed read as L-inf, "standard", no warnings, float32,
  "checkpoints", and "" (unknown weights).
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
  norm: str = "Linf"
  version: str = "standard"
  warnings: Sequence[str] = ()
  dtype: str = "float32"
  checkpoint: str = checkpointing.CHECKPOINTS_DIR
  weights_id: str = ""

  def covers(self, attacks: Iterable[str], *, epsilon: float, n_examples: int,
             split: str = "test", norm: str = "Linf", version: str = "standard",
             dtype: str = "float32") -> bool:
    """Whether this record holds every one of `attacks` at this radius, norm, size, split and
    precision (and, for AutoAttack's, this version)."""
    attacks = set(attacks)
    uses_version = any(a == "aa" or a.startswith("aa:") for a in attacks)
    return (self.split == split and self.n_examples == n_examples
            and abs(self.epsilon - epsilon) < 1e-9 and self.norm == norm
            and self.dtype == dtype
            and (self.version == version or not uses_version) and attacks <= set(self.accuracy))

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, record: Mapping[str, Any]) -> "EvalRecord":
    if not isinstance(record, Mapping):
      raise TypeError(f"a record is a JSON object, got {type(record).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {k: v for k, v in record.items() if k in names}
    fields["warnings"] = tuple(fields.get("warnings", ()))
    return cls(**fields)


def records_path(workdir: str) -> str:
  """The workdir's evaluation records (`RECORDS_FILE`)."""
  return os.path.join(workdir, RECORDS_FILE)


def eval_json_path(workdir: str, step: int, best: bool = False) -> str:
  """Where earlier versions wrote the records of `workdir`'s checkpoint `step` (`best`: the
  best-on-validation checkpoint kept by `checkpoint.keep_best`); read, never written."""
  directory = checkpointing.BEST_DIR if best else checkpointing.CHECKPOINTS_DIR
  return os.path.join(workdir, directory, str(step), EVAL_JSON)


def _damaged(path: str, where: str, error: Exception) -> ValueError:
  return ValueError(f"The evaluation records {path} are damaged ({where}: {error}). Move the "
                    "file aside (the checkpoints are unaffected; rerun the evaluations whose "
                    "records you need).")


def read_eval_records(path: str) -> list[EvalRecord]:
  """The records of a records file ([] when there is none): `RECORDS_FILE` (JSON lines; a last
  line without its newline, being written or cut by a kill, is not a record yet) or an earlier
  version's `eval.json` (a JSON list). A damaged record raises ValueError naming file and line."""
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    content = f.read()
  try:
    if not path.endswith(".jsonl"):
      return [EvalRecord.from_json(r) for r in json.loads(content)]
  except (ValueError, TypeError) as e:
    raise _damaged(path, "not a list of records", e) from None
  records = []
  for number, line in enumerate(content.split(b"\n")[:-1], 1):
    if line.strip():
      try:
        records.append(EvalRecord.from_json(json.loads(line)))
      except (ValueError, TypeError) as e:
        raise _damaged(path, f"line {number}", e) from None
  return records


def append_eval_record(path: str, record: EvalRecord) -> None:
  """Appends `record` to the records file `path` as one line, under an exclusive file lock (so
  evaluations running side by side do not interleave), then fsyncs. A line left unfinished by a
  killed writer is cut off first; complete records are never rewritten."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  line = (json.dumps(record.to_json()) + "\n").encode()
  with open(path, "a+b") as f:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
      f.seek(0)
      content = f.read()
      if content and not content.endswith(b"\n"):
        f.truncate(content.rfind(b"\n") + 1)
      f.write(line)
      f.flush()
      os.fsync(f.fileno())
    finally:
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def eval_records(workdir: str, step: int, best: bool = False) -> list[EvalRecord]:
  """The records of `workdir`'s checkpoint `step` (`best`: of its `best/` checkpoint): those an
  earlier version wrote in the checkpoint's `eval.json`, then those of `RECORDS_FILE`."""
  directory = checkpointing.BEST_DIR if best else checkpointing.CHECKPOINTS_DIR
  return read_eval_records(eval_json_path(workdir, step, best)) + [
      r for r in read_eval_records(records_path(workdir))
      if r.step == step and r.checkpoint == directory]


def latest_eval_records(workdir: str) -> list[EvalRecord]:
  """The records of `workdir`'s latest checkpoint ([] when it has none)."""
  steps = checkpointing.saved_steps(os.path.join(workdir, checkpointing.CHECKPOINTS_DIR))
  return eval_records(workdir, max(steps)) if steps else []


def _fraction(text: str, flag: str) -> float:
  """`"8/255"` or `"0.03"` -> float; errors name the flag."""
  try:
    num, _, den = text.partition("/")
    value = float(num) / (float(den) if den else 1.0)
  except (ValueError, ZeroDivisionError):
    raise ValueError(f"--{flag}={text!r}: use a number or a fraction such as 8/255.") from None
  if not math.isfinite(value) or value <= 0:
    raise ValueError(f"--{flag}={text}: use a finite positive number, such as 8/255.")
  return value


def restore_state(workdir: str, config, num_classes: int, image_shape, *,
                  step: int | None = None, best: bool = False, conv=None):
  """`(models by role, TrainState, step)` of a run's checkpoint (default: the latest; `best`:
  the best-on-validation one of `checkpoint.keep_best`), built from the run's `config`
  (`config.load_json`); the models compute in `config.eval.dtype`, their convolutions with `conv`
  (`models.get_model`). Raises CheckpointError naming what is there."""
  nets = models.build_models(config, methods.get_method(config.method.name).roles, num_classes,
                             dtype=config.eval.dtype, conv=conv)
  state = train_state.abstract_train_state(config, nets, image_shape, steps_per_epoch=1)
  directory = os.path.join(workdir, checkpointing.BEST_DIR if best else
                           checkpointing.CHECKPOINTS_DIR)
  if best and not os.path.isdir(directory):
    raise checkpointing.CheckpointError(
        f"No best checkpoint in {directory}: the run did not keep one (train with "
        "--config.checkpoint.keep_best=<attack> and a validation split).")
  ckpt = checkpointing.Checkpointer(directory, async_save=False)
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


def threat_model(config, norm: str | None, epsilon: float | None
                 ) -> tuple[str, float | None]:
  """`(norm, epsilon)` with the defaults filled in: a run converted from a RobustBench entry
  (config `model.robustbench`) takes the entry's threat model, and its radius when the norm is
  the entry's; otherwise L-inf (epsilon None: the caller's default, the run's `eval.epsilon`)."""
  entry = robustbench.ENTRIES[config.model.robustbench] if config.model.robustbench else None
  if norm is None:
    norm = entry.threat_model if entry is not None else "Linf"
  if epsilon is None and entry is not None and norm == entry.threat_model:
    epsilon = entry.radius
  return norm, epsilon


def evaluate_checkpoint(workdir: str, *, attacks_spec: str | None, step: int | None = None,
                        n_examples: int = 0, epsilon: float | None = None,
                        step_size: float | None = None, weights: str = "ema",
                        role: str = "target", split: str = "", data_dir: str = "",
                        data_source: str = "",
                        progress: bool = True, norm: str | None = None,
                        version: str = "standard", best: bool = False,
                        dtype: str = "", cpu_convolutions: str = "",
                        aa_devices: str = "auto", write: bool = True) -> dict:
  """Evaluates a trained run's checkpoint; returns its `EvalRecord` as a dict, with "path" (the
  records file) and "aa_states" (AutoAttack's state files), after appending it to the records
  file (`write=False`: the caller does, with `save_record`, e.g. after showing it).

  `epsilon` defaults to the run's `eval.epsilon`; `step_size` to the run's `eval.step_size`
  scaled by `epsilon / eval.epsilon` (2/255 at 8/255). `weights`: "ema" (the run's EMA weights
  when it kept them, else the live ones) or "live". `data_dir` replaces the run's `data.dir`
  (for a run trained elsewhere); `data_source` its `data.source`. `attacks_spec` None:
  `DEFAULT_ATTACKS` of the norm. Attacks run one at a time, each compiled once. `norm` and
  `version` are AutoAttack's (`aa` and its attacks named alone); with a norm other than Linf,
  `epsilon` has no run default and must be given. `best`: the checkpoint `checkpoint.keep_best`
  kept (records in `best/<step>/eval.json`). `dtype` replaces the run's `eval.dtype` (the
  precision the models compute in; float32 unless the run said otherwise). `cpu_convolutions`
  replaces the run's `cpu_convolutions` (`cpu.choose`; what runs the convolutions on CPU).
  A run converted from a RobustBench entry (config `model.robustbench`) defaults `norm` and
  `epsilon` to the entry's threat model and radius; otherwise `norm` defaults to "Linf".
  `aa_devices` ("auto", "all", "one"): what AutoAttack splits its batches over
  (`autoattack_devices`).
  """
  config = config_lib.load_json(os.path.join(workdir, "config.json"))
  if data_dir:
    config.data.dir = data_dir
  if data_source:
    config.data.source = data_source
  if dtype:
    config.eval.dtype = dtype
  if split:
    config.eval.split = split
  if cpu_convolutions:
    config.cpu_convolutions = cpu_convolutions
  if weights not in ("ema", "live"):
    raise ValueError(f"--weights must be 'ema' or 'live', got {weights!r}.")
  method = methods.get_method(config.method.name)
  if role not in method.roles:
    raise ValueError(f"--role={role!r}: method {config.method.name!r} trains the roles "
                     f"{', '.join(method.roles)}.")
  norm, epsilon = threat_model(config, norm, epsilon)
  if norm not in attacks.AUTOATTACK_NORMS:
    raise ValueError(f"--norm={norm!r}: use one of {', '.join(attacks.AUTOATTACK_NORMS)}.")
  if version not in AUTOATTACK_VERSIONS:
    raise ValueError(f"--version={version!r}: use one of {', '.join(AUTOATTACK_VERSIONS)}.")
  if epsilon is None and norm != "Linf":
    raise ValueError(f"--norm={norm} needs --epsilon (the run's eval.epsilon is an L-inf "
                     "radius), e.g. --epsilon=0.5 for L2 or --epsilon=12 for L1 on CIFAR-10.")
  epsilon = config.eval.epsilon if epsilon is None else epsilon
  for name, value in (("epsilon", epsilon), ("step_size", step_size)):
    if value is not None and not (math.isfinite(value) and value > 0):
      raise ValueError(f"{name} must be a finite positive number, got {value}.")
    if value is not None and norm == "Linf" and value > 1:  # as training refuses it
      raise ValueError(f"--{name}={value:g} is larger than the whole [0, 1] image range: L-inf "
                       f"radii are fractions of it. Did you mean {value:g}/255 = "
                       f"{value / 255:.6f}?")
  if step_size is None:
    step_size = config.eval.step_size * epsilon / config.eval.epsilon
  if attacks_spec is None:
    attacks_spec = DEFAULT_ATTACKS[norm]
  attack_list = attacks.parse_attacks(attacks_spec, epsilon=epsilon, step_size=step_size,
                                      norm=norm, version=version)
  config_lib.validate(config)
  # Every attack here loops over the same weights: oneDNN's kernels packed once per call.
  convolutions = cpu.convolutions_for(config).for_attacks()

  try:
    dataset = data.load_dataset(config.data)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"{e}\n(The run's data, as its config.json records it: data.source="
        f"{config.data.source!r}, data.dir={config.data.dir!r}, read from the current directory. "
        "Here, pass --data_dir=<path> to read it from elsewhere, and --data_source=files "
        "--data_dir=<directory with the CIFAR batches, or an .npz> for local files instead of "
        "TFDS.)") from None
  nets, state, step = restore_state(workdir, config, dataset.num_classes, dataset.image_shape,
                                    step=step, best=best, conv=convolutions.conv)
  if weights == "live":
    state = state.replace(ema_params=None, ema_batch_stats=None)
  used = "ema" if state.ema_params is not None else "live"
  model_dtype = str(np.dtype(nets[role].dtype))
  weights_id = f"{checkpointing.fingerprint(state.eval_variables(role)):08x}"
  writable = os.access(workdir, os.W_OK | os.X_OK)
  if not writable:
    print(f"Warning: {workdir} is not writable: the result will be shown but cannot be recorded, "
          "and AutoAttack cannot save a state to resume from.", flush=True)

  data_parallel = parallel.DataParallel(config.parallel)
  device_state = data_parallel.put_state(state)
  split_data = dataset.eval_split(config.eval.split)
  n = len(split_data.y) if n_examples <= 0 else min(n_examples, len(split_data.y))
  batch_size = data.eval_batch_size(n, config.data.eval_batch_size, data_parallel.num_devices)
  accuracy, seconds = {}, {}

  aa_warnings: list[str] = []
  aa_states: list[str] = []

  for position, (name, attack) in enumerate(attack_list):
    t0 = time.time()
    if name == "aa":  # the official evaluation: each attack on the points still robust
      variables = state.eval_variables(role)
      aa_on = autoattack_devices(aa_devices)
      logits_fn = functools.partial(_logits, autoattack_net(nets[role], convolutions, aa_on))
      key = jax.random.fold_in(rng.stream(state.rng, rng.EVAL), position)
      state_path = os.path.join(
          workdir, STATE_DIR, f"{'best' if best else 'checkpoints'}_{step}",
          f"{role}_{used}_{config.eval.split}_{norm}_{version}_eps{epsilon:.6g}_n{n}_"
          f"{model_dtype}.json") if writable else None
      result = attacks.run_autoattack(
          logits_fn, split_data.x[:n].astype(np.float32) / 255.0, split_data.y[:n], key,
          epsilon=epsilon, norm=norm, version=version, batch_size=batch_size,
          state_path=state_path, progress=progress, model_id=f"{weights_id}:{model_dtype}",
          devices=aa_on, params=variables)
      accuracy[name], seconds[name] = result.robust_accuracy, time.time() - t0
      # Robust accuracy after each of AutoAttack's attacks (cumulative, as the official log);
      # attacks skipped because no point was left robust show the accuracy they would keep.
      accuracy.update({f"aa:{k}": result.accuracy.get(k, result.robust_accuracy)
                       for k in result.attacks})
      seconds.update({f"aa:{k}": result.seconds[k] for k in result.attacks
                      if k in result.seconds})
      aa_warnings.extend(w for w in result.warnings if w not in aa_warnings)
      if state_path:
        aa_states.append(state_path)
      continue
    fn = data_parallel.map(functools.partial(evaluation.eval_step, model=nets[role], role=role,
                                             attack_list=((name, attack),),
                                             first_position=position),
                           donate_state=False, per_device_outputs=True)
    # The bar moves when a batch's result exists (dispatch is asynchronous: a bar on the batches
    # reached 100% while the work was queued), says while the first batch compiles (the call
    # returns once it is compiled and queued), and keeps time during long batches.
    bar = tqdm.tqdm(total=data.num_eval_batches(n, batch_size), desc=f"{name} (compiling)",
                    disable=not progress, leave=False)

    def run_batch(batch, fn=fn, bar=bar, name=name):
      pending = fn(device_state, data_parallel.put_batch(batch))
      bar.set_description(f"{name} ({n} points in batches of {batch_size})")
      counts = jax.block_until_ready(pending)
      bar.update(1)
      return counts

    with progress_lib.ticking(bar):
      accuracy.update(evaluation.accuracies(
          data.eval_batches(split_data, batch_size=batch_size, num_examples=n), run_batch,
          fetch=data_parallel.host_sum))
    bar.close()
    seconds[name] = time.time() - t0

  record = EvalRecord(step=int(step), role=role, weights=used, split=config.eval.split,
                      n_examples=n, epsilon=epsilon, step_size=step_size, accuracy=accuracy,
                      seconds=seconds, norm=norm, version=version, warnings=tuple(aa_warnings),
                      dtype=model_dtype,
                      checkpoint=checkpointing.BEST_DIR if best else checkpointing.CHECKPOINTS_DIR,
                      weights_id=weights_id)
  result = {**record.to_json(), "path": records_path(workdir), "aa_states": aa_states}
  if write:
    save_record(result)
  return result


AA_DEVICES = ("auto", "all", "one")
# The command's attacks when --attacks is not given, by norm (PGD and C&W are L-inf only).
DEFAULT_ATTACKS = {"Linf": "clean,pgd20,pgd50,cw20,aa", "L2": "clean,aa", "L1": "clean,aa"}


def autoattack_devices(setting: str, devices: Sequence[Any] | None = None) -> list | None:
  """The devices AutoAttack splits each batch over (`run_autoattack(devices=)`), of `devices`
  (default: this process's, `jax.local_devices()`): "all" of them, "one" (None: JAX's default
  device runs each batch whole), or "auto": all on GPU and TPU, one on CPU (where the host's
  cores already serve one device: docs/performance.md). The result does not depend on it
  (per-point random keys)."""
  if setting not in AA_DEVICES:
    raise ValueError(f"--aa_devices={setting!r}: use one of {', '.join(AA_DEVICES)}.")
  devices = list(jax.local_devices() if devices is None else devices)
  if setting == "one" or len(devices) < 2:
    return None
  if setting == "auto" and devices[0].platform == "cpu":
    return None
  return devices


def leaderboard_lines(entry: robustbench.Entry, record: Mapping[str, Any]) -> list[str]:
  """The RobustBench leaderboard's clean and AutoAttack accuracy beside the record's, when the
  record is of the entry's threat model and radius on the test split; else a line saying why
  they are not compared. "+-": one binomial standard error of an accuracy on the record's
  number of points (the leaderboard uses all 10,000)."""
  same = (record["norm"] == entry.threat_model and record["split"] == "test"
          and math.isclose(record["epsilon"], entry.radius, rel_tol=1e-6))
  if not same:
    return [f"{entry.describe()}; this evaluation ({record['split']}, {record['norm']} eps "
            f"{record['epsilon']:.5g}) is not of that threat model: not compared."]
  n = record["n_examples"]

  def ours(name):
    if name not in record["accuracy"]:
      return "-  (not run)"
    p = record["accuracy"][name]
    return f"{100 * p:.2f} +- {100 * math.sqrt(p * (1 - p) / n):.2f}"

  lines = [f"RobustBench {entry.key} ({entry.architecture}), {entry.threat_model} eps "
           f"{entry.epsilon}:",
           f"{'':<10}  {'leaderboard (10000 points)':>26}  ours ({n} points, +- one standard "
           "error)"]
  for label, ours_name, theirs in (("clean", "clean", entry.clean),
                                   ("AutoAttack", "aa", entry.autoattack)):
    lines.append(f"{label:<10}  {theirs:>26.2f}  {ours(ours_name)}")
  return lines


def save_record(result: Mapping[str, Any]) -> None:
  """Appends `evaluate_checkpoint`'s `result` to its records file ("path"), then removes the
  AutoAttack states it no longer needs ("aa_states"). OSError when the file cannot be written."""
  append_eval_record(result["path"], EvalRecord.from_json(result))
  for state_path in result["aa_states"]:  # the record now holds the result
    for leftover in (state_path, state_path + ".x_adv.npz", state_path + ".partial.npz"):
      if os.path.exists(leftover):
        os.remove(leftover)


def autoattack_net(net, convolutions: cpu.Convolutions, devices: Sequence[Any] | None):
  """`net` as AutoAttack runs it: on one device of several (`devices` None, the CPU default),
  its oneDNN convolutions use every core (`Convolutions.on_one_device`), not the per-device
  share the mapped evaluation steps use."""
  if devices is not None or convolutions.conv is None:
    return net
  return net.clone(conv_general_dilated=convolutions.on_one_device().conv)


def _logits(model, variables, x):
  """The model in inference mode: `x [B, H, W, C] -> logits [B, K]`."""
  return model.apply(variables, x, train=False)


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
  console.quiet_console(f)
  try:
    config = config_lib.load_json(os.path.join(f.workdir, "config.json"))
    cpu.configure_cpu_for(config)
    record = evaluate_checkpoint(
        f.workdir, attacks_spec=f.attacks, step=f.step, n_examples=f.n_examples,
        epsilon=None if f.epsilon is None else _fraction(f.epsilon, "epsilon"),
        step_size=None if f.step_size is None else _fraction(f.step_size, "step_size"),
        weights=f.weights, role=f.role, split=f.split, data_dir=f.data_dir,
        data_source=f.data_source, norm=f.norm,
        version=f.version, best=f.best, dtype=f.dtype, cpu_convolutions=f.cpu_convolutions,
        aa_devices=f.aa_devices, write=False)
  except (ValueError, TypeError, FileNotFoundError, checkpointing.CheckpointError) as e:
    if f.verbosity >= 1:  # --verbosity=1 shows the traceback
      raise
    sys.exit(f"regmix_jax.evaluate: {type(e).__name__}: {e}")
  except KeyboardInterrupt:
    if f.verbosity >= 1:
      raise
    # As the training command: one line, and out at once (tfds' download threads would keep the
    # process; the states are written atomically).
    print("regmix_jax.evaluate: interrupted. AutoAttack's progress is saved under "
          f"{os.path.join(f.workdir, STATE_DIR)} after each attack and within one at most a "
          "minute apart: the same command resumes it. Nothing else is recorded.",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)  # pylint: disable=protected-access
  autoattack = any(k == "aa" or k in attacks.AUTOATTACK_PARTS for k in record["accuracy"])
  print(f"{f.workdir}: step {record['step']}, {record['role']} ({record['weights']} weights), "
        f"{record['n_examples']} {record['split']} examples, {record['norm']} eps "
        f"{record['epsilon']:.5f}"
        f"{', AutoAttack version ' + record['version'] if autoattack else ''}, computed in "
        f"{record['dtype']}")
  print(format_table(record), flush=True)
  if config.model.robustbench and record["role"] == "target":
    print("\n".join(leaderboard_lines(robustbench.ENTRIES[config.model.robustbench], record)))
  for warning in record["warnings"]:
    print(f"Warning: {warning}")
  try:
    save_record(record)
  except OSError as e:
    sys.exit(f"regmix_jax.evaluate: the result above could not be recorded in {record['path']} "
             f"({type(e).__name__}: {e}). Copy it from this screen; to record it, make that file "
             "writable and evaluate again.")
  print(f"written to {record['path']}")


def define_flags() -> None:
  """The command's flags (defined only when it runs as a program, not on import)."""
  flags.DEFINE_string("workdir", None, "A training run's workdir (holds config.json, checkpoints).")
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
  flags.DEFINE_string("attacks", None, "Comma-separated attack names (default: "
                      f"{DEFAULT_ATTACKS['Linf']} for L-inf, {DEFAULT_ATTACKS['L2']} for L2 and "
                      "L1).")
  flags.DEFINE_integer("n_examples", 0, "Evaluate the first N examples of the split (0: all).")
  flags.DEFINE_string("epsilon", None, "Radius in --norm, e.g. 8/255 (default: the run's "
                      "L-inf radius; required for L2 and L1).")
  flags.DEFINE_enum("norm", None, list(attacks.AUTOATTACK_NORMS), "AutoAttack's threat model "
                    "(default: Linf, or a RobustBench entry's own).")
  flags.DEFINE_enum("aa_devices", "auto", list(AA_DEVICES), "What AutoAttack splits each batch "
                    "over: all local devices, one, or auto (all on GPU/TPU, one on CPU).")
  flags.DEFINE_enum("version", "standard", list(AUTOATTACK_VERSIONS), "AutoAttack's version.")
  flags.DEFINE_string("step_size", None, "PGD/C&W step (default: the run's, scaled with eps).")
  flags.DEFINE_enum("weights", "ema", ["ema", "live"], "EMA weights (when kept) or live ones.")
  flags.DEFINE_string("role", "target", "Which model to evaluate (D2R: target or guide).")
  flags.DEFINE_string("split", "", "test or val (default: the run's eval.split).")
  flags.DEFINE_string("data_dir", "", "Replaces the run's data.dir.")
  flags.DEFINE_enum("data_source", "", ["", *data.SOURCES], "Replaces the run's data.source "
                    "(files: the CIFAR batches or an .npz in --data_dir, no download).")
  flags.DEFINE_bool("best", False, "Evaluate the best-on-validation checkpoint the run kept "
                    "(config checkpoint.keep_best) instead of its latest.")
  flags.DEFINE_enum("dtype", "", ["", *models.DTYPES], "The precision the model computes in "
                    "(default: the run's eval.dtype, float32).")
  flags.DEFINE_enum("cpu_convolutions", "", ["", *cpu.CHOICES], "What runs the convolutions on "
                    "CPU (default: the run's cpu_convolutions; see the config's comment).")
  flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
  define_flags()
  console.exit_on_help(sys.argv, USAGE, flags.FLAGS, "regmix_jax.evaluate")
  app.run(main)
