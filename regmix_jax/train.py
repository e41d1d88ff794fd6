"""The training loop: `train_and_evaluate(config, workdir)`.

It knows no method by name: the method registry supplies the loss, `train_step` the update and
`parallel` the mapping. A run in a workdir that has checkpoints resumes from the latest one (same
data position, same metric sums), so a killed run restarted with the same command ends exactly
where an uninterrupted run would. SIGTERM or Ctrl-C saves a checkpoint and stops cleanly (a
second Ctrl-C aborts at once). A non-finite loss or parameter stops the run naming the step; no
checkpoint is written after it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging
from jax.experimental import multihost_utils

from regmix_jax import checkpointing, config as config_lib, cpu, data, evaluation, methods, models
from regmix_jax import parallel, progress as progress_lib, reporting, sample_state
from regmix_jax import train_state as ts_lib
from regmix_jax import workdir as workdir_lib
from regmix_jax.attacks import parse_attacks
from regmix_jax.train_step import bind_method, train_step

# Training steps queued ahead of the one the bar waits for: with one, small steps lost speed to
# the wait; with two, none (docs/performance.md, "The training bar").
STEPS_IN_FLIGHT = 2


def _prefetch(batches: Iterator[dict], put, size: int = 2) -> Iterator[tuple[np.ndarray, Any]]:
  """Puts up to `size` batches on device ahead of the one being consumed; yields `(host index
  [B], device batch)`."""
  queue = collections.deque()
  for batch in batches:
    queue.append((batch["index"], put(batch)))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


class SampleSync:
  """Moves a method's per-example state between the host buffers and the steps.

  `gather` adds the buffers of a host batch's examples as `batch["sample"]`. `push` queues a
  step's new values; they are written back one step late (fetching step s's output while step
  s + 1 runs), which is safe because an epoch visits every example at most once. `flush` writes
  everything back; it runs before each checkpoint and at the end of each epoch."""

  def __init__(self, samples: sample_state.SampleState | None,
               data_parallel: parallel.DataParallel):
    self.samples, self.data_parallel = samples, data_parallel
    self._pending: collections.deque = collections.deque()

  def gather(self, batch: dict) -> dict:
    if self.samples is None:
      return batch
    return {**batch, "sample": self.samples.gather(batch["index"])}

  def push(self, index: np.ndarray, values) -> None:
    if self.samples is None:
      return
    self._pending.append((index, values))
    while len(self._pending) > 1:
      self._write(*self._pending.popleft())

  def flush(self) -> None:
    while self._pending:
      self._write(*self._pending.popleft())

  def _write(self, index, values) -> None:
    self.samples.scatter(index, self.data_parallel.get_batch(values))


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.array([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


class _EpochMetrics:
  """Per-step training metrics of one epoch: kept on device until `flush`, then summed on the
  host after checking that every step's loss is finite."""

  def __init__(self, totals=None, steps: int = 0):
    self.totals: dict[str, float] = dict(totals or {})
    self.steps = steps
    self.last: dict[str, float] = {}
    self._pending: list[tuple[int, Any]] = []

  def push(self, step: int, metrics) -> None:
    self._pending.append((step, metrics))

  def flush(self, data_parallel: parallel.DataParallel) -> None:
    fetched = jax.device_get([data_parallel.unreplicate(m) for _, m in self._pending])
    for (step, _), metrics in zip(self._pending, fetched):
      metrics = {k: float(np.asarray(v)) for k, v in metrics.items()}
      if not math.isfinite(metrics["loss"]):
        raise FloatingPointError(
            f"Non-finite training loss ({metrics['loss']}) at step {step} (counting from 1). "
            "Training stopped; no checkpoint was written after this step, so the latest "
            "checkpoint holds the last good state. Lower the learning rate or check the data.")
      for k, v in metrics.items():
        self.totals[k] = self.totals.get(k, 0.0) + v
      self.steps += 1
      self.last = metrics
    self._pending = []

  def means(self) -> dict[str, float]:
    return {k: v / max(self.steps, 1) for k, v in self.totals.items()}


class _StopRequest:
  """Turns SIGTERM / SIGINT into a request to checkpoint and stop. The first signal restores the
  previous handler, so a second Ctrl-C aborts at once. Processes agree before stopping."""

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    signal.signal(signum, self._previous[signum])

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self) -> bool:
    """Whether any process got a signal (a collective call when there are several processes)."""
    local = self.signum is not None
    if jax.process_count() == 1:
      return local
    return bool(np.any(multihost_utils.process_allgather(np.array(local))))


@dataclasses.dataclass(frozen=True)
class Trainer:
  """What a training run is made of, without a workdir: built once by `build_trainer`.

  config: the validated config.
  data_parallel: how devices are used (`parallel.DataParallel`).
  dataset: the loaded dataset; `eval_split` the split evaluations read (`config.eval.split`).
  method: the registered method; `models` its Flax module per role.
  loader: the training batches (`data.TrainLoader`), sharded over the devices.
  samples: the method's per-example host state (FGSM-PGK's buffers), or None; `sample_sync`
    moves it between the host and the steps.
  train_step: the mapped per-device `train_step(state, batch) -> (state, metrics, sample
    values)`.
  eval_steps: role -> the mapped `evaluation.eval_step(state, batch) -> per-device counts` over
    `config.eval.attacks`, for every role in `config.eval.roles`.
  convolutions: what runs the models' convolutions (`cpu.convolutions_for(config)`).
  """

  config: ml_collections.ConfigDict
  data_parallel: parallel.DataParallel
  dataset: data.Dataset
  eval_split: data.Split
  method: methods.Method
  models: Mapping[str, nn.Module]
  loader: data.TrainLoader
  samples: sample_state.SampleState | None
  sample_sync: SampleSync
  train_step: Callable[..., Any]
  eval_steps: Mapping[str, Callable[..., Any]]
  convolutions: cpu.Convolutions

  @property
  def steps_per_epoch(self) -> int:
    return self.loader.steps_per_epoch

  def layout(self) -> dict[str, int]:
    """What fixes the data order and the step count: a resumed run must have the same."""
    return {"num_devices": self.data_parallel.num_devices,
            "batch_size": self.config.data.batch_size,
            "steps_per_epoch": self.steps_per_epoch, "seed": self.config.seed}

  def create_state(self) -> ts_lib.TrainState:
    """A freshly initialised TrainState on the host (every role, from `config.seed`)."""
    return ts_lib.create_train_state(self.config, self.models, self.dataset.image_shape,
                                     self.steps_per_epoch)

  def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[np.ndarray, Any]]:
    """The batches of `epoch` from step `start` for `train_step`: `(host index [B], device
    batch)`, with the method's per-example state gathered and two batches put on the devices
    ahead."""
    return _prefetch(map(self.sample_sync.gather, self.loader.epoch(epoch, start)),
                     self.data_parallel.put_batch)


def build_trainer(config: ml_collections.ConfigDict,
                  convolutions: cpu.Convolutions | None = None) -> Trainer:
  """Validates `config` and builds its `Trainer` (no workdir is touched). The models compute their
  convolutions as `convolutions` says (default: `cpu.convolutions_for(config)`). The
  CLI's `train_and_evaluate` runs it; the benchmarks time its `train_step`."""
  config_lib.validate(config)
  data_parallel = parallel.DataParallel(config.parallel)
  config_lib.validate(config, data_parallel.num_devices)
  if convolutions is None:
    convolutions = cpu.convolutions_for(config)
  dataset = data.load_dataset(config.data)
  method = methods.get_method(config.method.name)
  nets = models.build_models(config, method.roles, dataset.num_classes, conv=convolutions.conv)
  loader = data.TrainLoader(dataset.train, batch_size=config.data.batch_size,
                            num_shards=data_parallel.num_devices,
                            shard_ids=data_parallel.shard_ids, seed=config.seed)
  if loader.steps_per_epoch == 0:
    raise ValueError(f"Config field `data.batch_size` = {config.data.batch_size} is larger than "
                     f"the training set ({len(dataset.train.y)} examples).")
  samples = None
  if method.sample_state is not None:
    samples = sample_state.SampleState(
        method.sample_state, num_examples=len(dataset.train.y), image_shape=dataset.image_shape,
        num_shards=data_parallel.num_devices, shard_ids=data_parallel.shard_ids)
  step = data_parallel.map(
      functools.partial(train_step, method=bind_method(method.loss, nets, config.method),
                        post_update=(None if method.post_update is None else
                                     bind_method(method.post_update, nets, config.method)),
                        augment=config.data.augment, pad_mode=config.data.pad_mode,
                        rotate_degrees=config.data.rotate_degrees,
                        ema_decay=config.ema.decay),
      donate_state=jax.default_backend() != "cpu", batch_outputs=(False, False, True))
  attack_list = parse_attacks(config.eval.attacks, epsilon=config.eval.epsilon,
                              step_size=config.eval.step_size)
  eval_nets = models.build_models(config, method.roles, dataset.num_classes,
                                  dtype=config.eval.dtype, conv=convolutions.conv)
  eval_steps = {
      role: data_parallel.map(functools.partial(evaluation.eval_step, model=eval_nets[role],
                                                role=role, attack_list=attack_list),
                              donate_state=False, per_device_outputs=True)
      for role in config_lib.eval_roles(config)}
  return Trainer(config=config, data_parallel=data_parallel, dataset=dataset,
                 eval_split=dataset.eval_split(config.eval.split), method=method, models=nets,
                 loader=loader, samples=samples, sample_sync=SampleSync(samples, data_parallel),
                 train_step=step, eval_steps=eval_steps, convolutions=convolutions)


@dataclasses.dataclass(frozen=True)
class RunOutputs:
  """What a run writes in its workdir: checkpoints, and on the main process (`is_main`) the
  per-epoch `metrics.jsonl` and TensorBoard scalars (None / a no-op writer elsewhere)."""

  workdir: str
  checkpointer: checkpointing.Checkpointer
  metrics_log: reporting.MetricsLog | None
  board: reporting.TensorBoard
  is_main: bool
  # `<workdir>/best/`: the best state on the validation split (`checkpoint.keep_best`), or None.
  best_checkpointer: checkpointing.Checkpointer | None = None

  @classmethod
  def open(cls, workdir: str, config: ml_collections.ConfigDict,
           steps_per_epoch: int) -> "RunOutputs":
    """Creates `workdir` and opens the writers. The config is written once the run's state is
    known (`_record_config`)."""
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    checkpointer = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=config.checkpoint.max_to_keep,
        async_save=config.checkpoint.async_save)
    best = None
    if config.checkpoint.keep_best:
      best = checkpointing.Checkpointer(os.path.join(workdir, checkpointing.BEST_DIR),
                                        max_to_keep=1,
                                        async_save=config.checkpoint.async_save)
    return cls(workdir=workdir, checkpointer=checkpointer,
               metrics_log=(reporting.MetricsLog(os.path.join(workdir, "metrics.jsonl"),
                                                 steps_per_epoch) if is_main else None),
               board=reporting.TensorBoard(os.path.join(workdir, "tensorboard")
                                           if is_main else None),
               is_main=is_main, best_checkpointer=best)

  def close(self, raise_errors: bool = True) -> None:
    """Waits for the saves under way and closes the writers; `raise_errors=False` while another
    error is being raised (a failed save is then not raised over it)."""
    try:
      self.checkpointer.close(raise_errors)
      if self.best_checkpointer is not None:
        self.best_checkpointer.close(raise_errors)
    finally:
      try:
        self.board.close()
      except OSError:  # e.g. the disk is full: report it unless another error is on its way
        if raise_errors:
          raise


class _Interrupted(Exception):
  """A stop request (SIGTERM / SIGINT) arrived during an evaluation."""


def _restore_latest_good(trainer: Trainer, outputs: RunOutputs):
  """`(state, meta)` from the newest checkpoint that restores (its per-example state loaded into
  `trainer.samples`), or a fresh state when there is none. A damaged checkpoint is skipped, and
  once an older one has restored, named in a warning with why and moved aside to
  `<workdir>/checkpoints_damaged/<step>`; with none restorable, CheckpointError lists every step
  tried, grouped by error, and the fields in which the config differs from the saved one."""
  state = trainer.create_state()
  meta = {"epoch": 0, "step_in_epoch": 0, "sums": {}, "steps": 0, **trainer.layout()}
  checkpointer = outputs.checkpointer
  failures = []
  for step in sorted(checkpointer.all_steps(), reverse=True):
    try:
      if trainer.samples is None:
        restored_state, restored_meta = checkpointer.restore(state, step=step)
      else:
        restored_state, restored_meta, sample = checkpointer.restore(
            state, step=step,
            sample_target=trainer.samples.abstract_global(trainer.data_parallel.mesh))
    except checkpointing.CheckpointError as e:
      failures.append((step, e))
      continue
    checkpointing.check_layout(restored_meta, trainer.layout(), checkpointer.directory)
    if trainer.samples is not None:
      trainer.samples.load_global(sample)
    for bad, error in failures:
      logging.warning("The checkpoint at step %d was skipped: %s", bad, error)
    if failures and outputs.is_main:
      aside = os.path.join(outputs.workdir, "checkpoints_damaged")
      for bad, _ in failures:
        checkpointer.set_aside(bad, aside)
      logging.warning("Resuming from the checkpoint at step %d; the newer, damaged ones (steps "
                      "%s) were moved to %s.", step, ", ".join(str(s) for s, _ in failures),
                      aside)
    if outputs.is_main:
      where = (f"training complete at epoch {restored_meta['epoch']}: evaluating it"
               if restored_meta["epoch"] >= trainer.config.num_epochs else
               f"epoch {restored_meta['epoch'] + 1}, step {restored_meta['step_in_epoch']}")
      print(f"Resuming from {checkpointer.directory}/{int(restored_state.step)} ({where}).",
            flush=True)
    return restored_state, restored_meta
  if failures:
    changes = _saved_config_changes(outputs.workdir, trainer.config)
    hint = ("\nThis run's config differs from the one the workdir's checkpoints were trained "
            "with (its config.json, left as it was): " + "; ".join(changes) + ". Run with those "
            "fields as they were, or use a new --workdir." if changes else "")
    raise checkpointing.CheckpointError(
        f"No checkpoint in {checkpointer.directory} could be restored; tried:\n" +
        _grouped_failures(failures, checkpointer.directory) + hint)
  return state, meta


def _grouped_failures(failures: list[tuple[int, Exception]], directory: str) -> str:
  """One line per distinct error (its checkpoint's path written `<directory>/<step>`), with the
  steps that failed with it: 24 checkpoints of another config make one line, not 24."""
  groups: dict[str, list[int]] = {}
  for step, error in failures:
    message = str(error).replace(os.path.join(directory, str(step)),
                                 os.path.join(directory, "<step>"))
    groups.setdefault(message, []).append(step)
  return "\n".join(f"  step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))}: {message}"
                   for message, steps in groups.items())


def _saved_config_changes(workdir: str, config: ml_collections.ConfigDict) -> list[str]:
  """`config_lib.changed_fields` from the config saved in `<workdir>/config.json` to `config`
  ([] without a saved one; one entry saying why when it cannot be read)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return []
  try:
    return config_lib.changed_fields(config_lib.load_json(path), config)
  except (ValueError, TypeError, AttributeError, KeyError) as e:  # not a config's JSON
    return [f"the saved config cannot be read ({type(e).__name__}: {e})"]


def _record_config(workdir: str, config: ml_collections.ConfigDict,
                   resumed_step: int | None) -> None:
  """Writes `config` to `<workdir>/config.json` (the main process calls it) once the run's state
  is known: for a new run; for one resumed from step `resumed_step` whose config differs from
  the saved one, after copying that to `config.to_step_<resumed_step>.json` (unless a copy for
  that step exists: the config of an earlier resume that trained no step is not the one that
  trained up to it) and warning with the changed fields (e.g. more epochs), so the workdir
  records which config trained which steps. A config that cannot restore the run's checkpoints
  (another model, say) stops the run before this, and the saved config, which `evaluate` reads,
  stays as it was. Written to a temporary file and renamed into place: a kill leaves the old or
  the new file, never none or a truncated one."""
  path = os.path.join(workdir, "config.json")
  if resumed_step is not None and os.path.exists(path):
    changes = _saved_config_changes(workdir, config)
    if not changes:
      return
    kept = os.path.join(workdir, f"config.to_step_{resumed_step}.json")
    if not os.path.exists(kept):
      shutil.copyfile(path, kept + ".tmp")
      os.replace(kept + ".tmp", kept)
    logging.warning("Resuming at step %d with a changed config: %s. The config that trained the "
                    "steps before is kept in %s.", resumed_step, "; ".join(changes), kept)
  workdir_lib.write_atomic(path, config.to_json_best_effort(indent=2))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints).

  Returns the final evaluation accuracies ({attack name: fraction}) once training is complete,
  or {} when it was stopped by a signal. On a CPU-only machine, call
  `cpu.configure_cpu_for(config)` before JAX starts to use every core. The main process holds
  the workdir's lock while it runs (`workdir.exclusive`: a second run there stops at once), and a
  run with no checkpoint first moves another run's outputs aside (`workdir.set_aside_previous_run`).
  """
  config_lib.validate(config)  # a mistyped config fails before the workdir is touched
  config = _with_absolute_data_dir(config)
  is_main = jax.process_index() == 0
  with workdir_lib.exclusive(workdir, "training") if is_main else contextlib.nullcontext():
    if is_main and not checkpointing.saved_steps(
        os.path.join(workdir, checkpointing.CHECKPOINTS_DIR)):
      workdir_lib.set_aside_previous_run(workdir)
    return _train_in(build_trainer(config), workdir)


def _with_absolute_data_dir(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose `data.dir`, if relative, is absolute: config.json is read later
  from other directories (`evaluate`), where a relative path would name another place."""
  path = os.path.expanduser(config.data.dir)
  if not path or (os.path.isabs(path) and path == config.data.dir):
    return config
  config = config.copy_and_resolve_references()
  config.data.dir = os.path.abspath(path)
  return config


def _train_in(trainer: Trainer, workdir: str) -> dict[str, float]:
  """`train_and_evaluate`'s loop, in a workdir this process may write."""
  config = trainer.config
  outputs = RunOutputs.open(workdir, config, trainer.steps_per_epoch)
  final: dict[str, float] = {}
  try:
    state, meta = _restore_latest_good(trainer, outputs)
    if outputs.is_main:
      _record_config(workdir, config,
                     int(state.step) if outputs.checkpointer.all_steps() else None)
      if jax.default_backend() == "cpu":
        print(trainer.convolutions.describe(), flush=True)
    device_state = trainer.data_parallel.put_state(state)
    del state  # the live state is `device_state`
    compiled: set = set()  # what this process has compiled, for the bars' "(compiling ...)"
    with _StopRequest() as stop:
      for epoch in range(meta["epoch"], config.num_epochs):
        resuming = epoch == meta["epoch"] and meta["step_in_epoch"] > 0
        start = meta["step_in_epoch"] if resuming else 0
        # Checkpoint metadata keeps the epoch's running totals under "sums" and "steps".
        metrics = _EpochMetrics(meta["sums"], meta["steps"]) if resuming else _EpochMetrics()
        device_state, stopped, rate = _train_epoch(trainer, outputs, device_state, epoch, start,
                                                   metrics, stop, compiled)
        if not stopped:
          epoch_result, stopped = _end_epoch(trainer, outputs, device_state, epoch, metrics,
                                             rate, stop, compiled)
        if stopped:
          if outputs.is_main:
            print(f"Stopped by a signal at step {epoch * trainer.steps_per_epoch + stopped}; the "
                  "checkpoint is saved. Run the same command to resume.", flush=True)
          break
        if epoch + 1 == config.num_epochs:
          final = epoch_result
      else:
        if not final:  # nothing left to train (a finished run started again): evaluate only
          final = _evaluate(trainer, device_state, num_examples=0, compiled=compiled)
  except BaseException:
    outputs.close(raise_errors=False)
    raise
  outputs.close()
  if outputs.is_main and final:
    print("\n" + reporting.summary_table(outputs.metrics_log.records), flush=True)
    n = len(trainer.eval_split.y)
    if 0 < config.eval.num_examples < n:  # the table's eval_* columns differ in their points
      print(f"(eval_* of the epochs before the last: the first {config.eval.num_examples} "
            f"{config.eval.split} examples, eval.num_examples; the last epoch: all {n})")
    print(f"final ({config.eval.split}, all {n}; Linf eps {config.eval.epsilon:.5f}): " +
          ", ".join(f"{k} {100 * v:.2f}%" for k, v in final.items()), flush=True)
    workdir_lib.write_atomic(os.path.join(workdir, "final_eval.json"),
                             json.dumps(final, indent=2))
  return final


def _current_step(trainer: Trainer, device_state) -> int:
  return int(jax.device_get(trainer.data_parallel.unreplicate(device_state.step)))


def _check_finite(trainer: Trainer, device_state, before: str) -> None:
  """Raises FloatingPointError when a parameter is not finite, naming the step and that nothing
  was saved after it. Checks the first local device's copy (the replicas are equal): no program
  spanning the devices runs outside the train step (on CPU a device kept waiting at a
  collective aborts the process)."""
  if not bool(_all_finite(trainer.data_parallel.unreplicate(device_state.params))):
    raise FloatingPointError(
        f"Non-finite parameters after step {_current_step(trainer, device_state)}. Training "
        f"stopped before {before}; the latest checkpoint holds the last good state. Lower the "
        "learning rate or check the data.")


def _save(trainer: Trainer, outputs: RunOutputs, device_state, epoch: int, step_in_epoch: int,
          metrics: _EpochMetrics) -> None:
  """Checkpoints the state at data position (epoch, step_in_epoch) after checking it is finite."""
  step = _current_step(trainer, device_state)
  _check_finite(trainer, device_state, "saving them")
  trainer.sample_sync.flush()
  samples = trainer.samples
  outputs.checkpointer.save(
      step, trainer.data_parallel.unreplicate(device_state),
      {"epoch": epoch, "step_in_epoch": step_in_epoch, "sums": metrics.totals,
       "steps": metrics.steps, **trainer.layout()},
      sample=None if samples is None else samples.to_global(trainer.data_parallel.mesh))


def _train_epoch(trainer: Trainer, outputs: RunOutputs, device_state, epoch: int, start: int,
                 metrics: _EpochMetrics, stop: _StopRequest, compiled: set):
  """Runs the steps of `epoch` from `start`. Returns `(state, stopped, images/s)`, where `stopped`
  is the step within the epoch at which a signal stopped it (checkpoint saved), or 0. The bar
  says "compiling" while the process's first step compiles (`compiled` records it)."""
  config, steps_per_epoch = trainer.config, trainer.steps_per_epoch
  t0, done = time.time(), 0
  bar = tqdm.tqdm(total=steps_per_epoch, initial=start,
                  desc=f"epoch {epoch + 1}/{config.num_epochs}", disable=not outputs.is_main,
                  dynamic_ncols=True, mininterval=1.0)
  single_process = jax.process_count() == 1
  in_flight: collections.deque = collections.deque()  # the results of queued steps
  if trainer.samples is not None and start == 0:
    trainer.samples.maybe_reset(config.method, epoch, config.seed)
  for step_in_epoch, (index, batch) in enumerate(trainer.batches(epoch, start), start):
    global_step = epoch * steps_per_epoch + step_in_epoch + 1
    if "train" not in compiled:
      bar.set_description(f"epoch {epoch + 1}/{config.num_epochs} (compiling the train step)")
    device_state, step_metrics, sample_values = trainer.train_step(device_state, batch)
    if "train" not in compiled:
      compiled.add("train")
      bar.set_description(f"epoch {epoch + 1}/{config.num_epochs}")
    trainer.sample_sync.push(index, sample_values)
    metrics.push(global_step, step_metrics)
    done += 1
    # The bar counts finished steps: the oldest queued step's result is waited for once
    # STEPS_IN_FLIGHT are queued (the device never waits for the host).
    in_flight.append(step_metrics)
    if len(in_flight) > STEPS_IN_FLIGHT:
      jax.block_until_ready(in_flight.popleft())
      bar.update(1)
    every = config.checkpoint.every_steps
    want_checkpoint = every > 0 and global_step % every == 0 and step_in_epoch + 1 < steps_per_epoch
    sync = want_checkpoint or global_step % config.log_every_steps == 0
    stopping = (sync or single_process) and stop.requested()
    if sync or stopping:
      metrics.flush(trainer.data_parallel)
      bar.set_postfix(loss=f"{metrics.last['loss']:.3f}",
                      acc=f"{metrics.last.get('accuracy', float('nan')):.3f}",
                      img_s=f"{done * config.data.batch_size / (time.time() - t0):.0f}")
      outputs.board.scalars(global_step, metrics.last, "train/")
    if want_checkpoint or stopping:
      _save(trainer, outputs, device_state, epoch, step_in_epoch + 1, metrics)
    if stopping:
      bar.close()
      outputs.checkpointer.wait()
      return device_state, step_in_epoch + 1, 0.0
  for pending in in_flight:
    jax.block_until_ready(pending)
    bar.update(1)
  bar.close()
  trainer.sample_sync.flush()
  metrics.flush(trainer.data_parallel)
  return device_state, 0, done * config.data.batch_size / max(time.time() - t0, 1e-9)


def _evaluate(trainer: Trainer, device_state, num_examples: int,
              stop: _StopRequest | None = None, compiled: set | None = None) -> dict[str, float]:
  """Accuracies of every evaluated role; names of roles other than the target are prefixed.
  With `stop`, a stop request between two batches raises `_Interrupted`. The bar says
  "compiling" while a batch shape this process has not run compiles (`compiled`), and keeps
  time while a batch computes."""
  compiled = set() if compiled is None else compiled
  out = {}
  split = trainer.eval_split
  n = len(split.y) if num_examples <= 0 else min(num_examples, len(split.y))
  batch_size = data.eval_batch_size(n, trainer.config.data.eval_batch_size,
                                    trainer.data_parallel.num_devices)
  for role, eval_step in trainer.eval_steps.items():
    def batches():
      for batch in data.eval_batches(split, batch_size=batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(), num_examples=n):
        if stop is not None and stop.requested():
          raise _Interrupted()
        yield batch
    put = trainer.data_parallel.put_batch
    desc = f"evaluating{'' if role == 'target' else ' ' + role}"
    shape = ("eval", role, batch_size)
    bar = tqdm.tqdm(total=data.num_eval_batches(n, batch_size),
                    desc=desc if shape in compiled else f"{desc} (compiling)",
                    disable=jax.process_index() != 0, leave=False, dynamic_ncols=True)

    def run_batch(batch, f=eval_step, bar=bar, desc=desc, shape=shape):
      pending = f(device_state, put(batch))  # returns once compiled and queued
      if shape not in compiled:
        compiled.add(shape)
        bar.set_description(desc)
      counts = jax.block_until_ready(pending)  # the bar follows results
      bar.update(1)
      return counts

    try:
      with progress_lib.ticking(bar):
        acc = evaluation.accuracies(batches(), run_batch, fetch=trainer.data_parallel.host_sum)
    finally:
      bar.close()
    out.update({(k if role == "target" else f"{role}_{k}"): v for k, v in acc.items()})
  return out


def _keep_if_best(trainer: Trainer, outputs: RunOutputs, device_state, epoch: int,
                  value: float) -> None:
  """Saves the state in `<workdir>/best/` when `value` (the validation score named by
  `checkpoint.keep_best`) is at least the best so far (ties: the later epoch, as FGSM-PGK's
  `if best_result <= pgd_acc`, FGSM_PGK_CIFAR10.py:387)."""
  best = outputs.best_checkpointer
  previous = best.latest_meta()
  step = _current_step(trainer, device_state)
  if previous is not None and (value < previous["value"] or step in best.all_steps()):
    return
  best.save(step, trainer.data_parallel.unreplicate(device_state),
            {"epoch": epoch + 1, "metric": trainer.config.checkpoint.keep_best, "value": value,
             "split": trainer.config.eval.split})
  if outputs.is_main:
    print(f"best so far on {trainer.config.eval.split} "
          f"({trainer.config.checkpoint.keep_best} {100 * value:.2f}%): epoch {epoch + 1}, kept "
          f"in {best.directory}/{step}", flush=True)


def _end_epoch(trainer: Trainer, outputs: RunOutputs, device_state, epoch: int,
               metrics: _EpochMetrics, rate: float, stop: _StopRequest | None = None,
               compiled: set | None = None) -> tuple[dict[str, float], int]:
  """Evaluates when due, appends the epoch record, checkpoints the next epoch's start. Returns
  `(evaluation ({} when none was due), stopped)`. The last epoch evaluates the whole split. A
  stop request during the evaluation saves the epoch's end (its evaluation still to do, which a
  resumed run does first) and returns `stopped` = the epoch's step count."""
  config = trainer.config
  _check_finite(trainer, device_state, "evaluating or saving them")
  # Epochs counted from 1 where a user sees them (the bar, this line, metrics.jsonl).
  record = {"epoch": epoch + 1, "step": (epoch + 1) * trainer.steps_per_epoch,
            **{f"train_{k}": v for k, v in metrics.means().items()}, "images_per_sec": rate}
  last = epoch + 1 == config.num_epochs
  result = {}
  if last or (epoch + 1) % config.eval.every_epochs == 0:
    try:
      result = _evaluate(trainer, device_state, 0 if last else config.eval.num_examples, stop,
                         compiled)
    except _Interrupted:
      _save(trainer, outputs, device_state, epoch, trainer.steps_per_epoch, metrics)
      outputs.checkpointer.wait()
      return {}, trainer.steps_per_epoch
    record.update({f"eval_{k}": v for k, v in result.items()})
    # On the training curves' step axis (the global step at the epoch's end), with the epoch
    # count as a scalar of its own.
    outputs.board.scalars(record["step"], {**result, "epoch": epoch + 1}, "eval/")
  if result and config.checkpoint.keep_best:
    _keep_if_best(trainer, outputs, device_state, epoch, result[config.checkpoint.keep_best])
  if outputs.is_main:
    # Logged before the checkpoint so that a kill in between cannot lose the record; the epoch
    # is then re-run on resume and MetricsLog skips the record it already has.
    outputs.metrics_log.append(record)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in record.items()), flush=True)
  _save(trainer, outputs, device_state, epoch + 1, 0, _EpochMetrics())
  return result, 0
