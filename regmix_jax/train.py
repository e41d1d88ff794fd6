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
import functools
import json
import math
import os
import signal
import threading
import types
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from regmix_jax import checkpointing, config as config_lib, data, evaluate, methods, models
from regmix_jax import parallel, reporting, sample_state, train_state as ts_lib
from regmix_jax.train_step import bind_method, train_step


def build_models(config: ml_collections.ConfigDict, roles, num_classes: int) -> dict[str, Any]:
  """Role -> Flax module. BatchNorm is synchronised over the data-parallel axis when
  `model.sync_batch_norm` (the statistics of the global batch, as on one GPU)."""
  axis_name = parallel.AXIS if config.model.sync_batch_norm else None
  dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
  built = {}
  for role in roles:
    model_cfg = config.model if role == "target" else config[f"{role}_model"]
    sizes = {k: model_cfg[k] for k in ("width", "depth") if model_cfg[k]}
    built[role] = models.get_model(model_cfg.name, num_classes, axis_name=axis_name, dtype=dtype,
                                   **sizes)
  return built


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


class _SampleSync:
  """Moves a method's per-example state between the host buffers and the steps.

  `gather` adds the buffers of a host batch's examples as `batch["sample"]`. `push` queues a
  step's new values; they are written back one step late (fetching step s's output while step
  s + 1 runs), which is safe because an epoch visits every example at most once. `flush` writes
  everything back; it runs before each checkpoint and at the end of each epoch."""

  def __init__(self, samples: sample_state.SampleState | None, par: parallel.DataParallel):
    self.samples, self.par = samples, par
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
    self.samples.scatter(index, self.par.get_batch(values))


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.array([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


class _EpochMetrics:
  """Per-step training metrics of one epoch: kept on device until `flush`, then summed on the
  host after checking that every step's loss is finite."""

  def __init__(self, sums=None, steps: int = 0):
    self.sums: dict[str, float] = dict(sums or {})
    self.steps = steps
    self.last: dict[str, float] = {}
    self._pending: list[tuple[int, Any]] = []

  def push(self, step: int, metrics) -> None:
    self._pending.append((step, metrics))

  def flush(self, par: parallel.DataParallel) -> None:
    fetched = jax.device_get([par.unreplicate(m) for _, m in self._pending])
    for (step, _), metrics in zip(self._pending, fetched):
      metrics = {k: float(np.asarray(v)) for k, v in metrics.items()}
      if not math.isfinite(metrics["loss"]):
        raise FloatingPointError(
            f"Non-finite training loss ({metrics['loss']}) at step {step} (counting from 1). "
            "Training stopped; no checkpoint was written after this step, so the latest "
            "checkpoint holds the last good state. Lower the learning rate or check the data.")
      for k, v in metrics.items():
        self.sums[k] = self.sums.get(k, 0.0) + v
      self.steps += 1
      self.last = metrics
    self._pending = []

  def means(self) -> dict[str, float]:
    return {k: v / max(self.steps, 1) for k, v in self.sums.items()}


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


def _layout(config, par, spe) -> dict[str, int]:
  """What fixes the data order and the step count: a resumed run must have the same."""
  return {"num_devices": par.num_devices, "batch_size": config.data.batch_size,
          "steps_per_epoch": spe, "seed": config.seed}


def build_trainer(config: ml_collections.ConfigDict) -> types.SimpleNamespace:
  """What a training run is made of, without a workdir: validates `config` and returns
  `par` (DataParallel), `dataset`, `method`, `nets`, `loader`, `spe` (steps per epoch), `state`
  (a freshly initialised host TrainState), `samples` (the method's per-example state or None),
  `sync` and `p_train` (the mapped train step). `train_and_evaluate` adds checkpoints, evaluation
  and logs; `experiments/benchmark.py` times `p_train` on `feed`'s batches."""
  config_lib.validate(config)
  par = parallel.DataParallel(config.parallel)
  config_lib.validate(config, par.num_devices)
  dataset = data.load_dataset(config.data)
  method = methods.get_method(config.method.name)
  nets = build_models(config, method.roles, dataset.num_classes)
  loader = data.TrainLoader(dataset.train, batch_size=config.data.batch_size,
                            num_shards=par.num_devices, shard_ids=par.shard_ids, seed=config.seed)
  spe = loader.steps_per_epoch
  if spe == 0:
    raise ValueError(f"Config field `data.batch_size` = {config.data.batch_size} is larger than "
                     f"the training set ({len(dataset.train.y)} examples).")
  samples = None
  if method.sample_state is not None:
    samples = sample_state.SampleState(
        method.sample_state, num_examples=len(dataset.train.y), image_shape=dataset.image_shape,
        num_shards=par.num_devices, shard_ids=par.shard_ids)
  p_train = par.map(functools.partial(train_step,
                                      method=bind_method(method.loss, nets, config.method),
                                      augment=config.data.augment, ema_decay=config.ema.decay),
                    donate_state=jax.default_backend() != "cpu",
                    batch_outputs=(False, False, True))
  return types.SimpleNamespace(
      config=config, par=par, dataset=dataset, method=method, nets=nets, loader=loader, spe=spe,
      state=ts_lib.create_train_state(config, nets, dataset.image_shape, spe), samples=samples,
      sync=_SampleSync(samples, par), p_train=p_train)


def feed(run: types.SimpleNamespace, epoch: int,
         start: int = 0) -> Iterator[tuple[np.ndarray, Any]]:
  """The batches of `epoch` from step `start` for `run.p_train`: `(host index [B], device batch)`,
  with the method's per-example state gathered and two batches put on device ahead."""
  return _prefetch(map(run.sync.gather, run.loader.epoch(epoch, start)), run.par.put_batch)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints).

  Returns the final evaluation accuracies ({attack name: fraction}) once training is complete,
  or {} when it was stopped by a signal. On a CPU-only machine, call
  `runtime.configure_cpu_devices` before JAX starts to use every core.
  """
  run = build_trainer(config)
  par, spe, samples, state = run.par, run.spe, run.samples, run.state
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.checkpoint.max_to_keep,
                                    async_save=config.checkpoint.async_save)
  meta = {"epoch": 0, "step_in_epoch": 0, "sums": {}, "steps": 0, **_layout(config, par, spe)}
  if ckpt.latest_step() is not None:
    if samples is None:
      state, meta = ckpt.restore(state)
    else:
      state, meta, restored = ckpt.restore(state,
                                           sample_target=samples.abstract_global(par.mesh))
      samples.load_global(restored)
    checkpointing.check_layout(meta, _layout(config, par, spe), ckpt.directory)
    if is_main:
      print(f"Resuming from {ckpt.directory}/{int(state.step)} "
            f"(epoch {meta['epoch'] + 1}, step {meta['step_in_epoch']}).", flush=True)

  run.state = None  # the live state is `dstate` below
  vars(run).update(
      ckpt=ckpt, is_main=is_main,
      eval_split=run.dataset.test if config.eval.split == "test" else run.dataset.val,
      p_eval={role: par.map(functools.partial(
          evaluate.eval_step, model=run.nets[role], role=role,
          attack_list=evaluate.parse_attacks(config.eval.attacks, epsilon=config.eval.epsilon,
                                             step_size=config.eval.step_size)),
                            donate_state=False, per_device_outputs=True)
              for role in config_lib.eval_roles(config)},
      log=reporting.MetricsLog(os.path.join(workdir, "metrics.jsonl")) if is_main else None,
      board=reporting.TensorBoard(os.path.join(workdir, "tensorboard") if is_main else None))
  dstate = par.put_state(state)
  del state
  final: dict[str, float] = {}
  try:
    with _StopRequest() as stop:
      for epoch in range(meta["epoch"], config.num_epochs):
        resuming = epoch == meta["epoch"] and meta["step_in_epoch"] > 0
        start = meta["step_in_epoch"] if resuming else 0
        sums = _EpochMetrics(meta["sums"], meta["steps"]) if resuming else _EpochMetrics()
        dstate, stopped, rate = _train_epoch(run, dstate, epoch, start, sums, stop)
        if stopped:
          if is_main:
            print(f"Stopped by a signal at step {epoch * spe + stopped}; the checkpoint is "
                  "saved. Run the same command to resume.", flush=True)
          break
        evaluation = _end_epoch(run, dstate, epoch, sums, rate)
        if epoch + 1 == config.num_epochs:
          final = evaluation
      else:
        if not final:  # nothing left to train (a finished run started again): evaluate only
          final = _evaluate(run, dstate, num_examples=0)
  finally:
    ckpt.close()
    run.board.close()
  if is_main and final:
    print("\n" + reporting.summary_table(run.log.records), flush=True)
    print(f"final ({config.eval.split}): " +
          ", ".join(f"{k} {100 * v:.2f}%" for k, v in final.items()), flush=True)
    with open(os.path.join(workdir, "final_eval.json"), "w") as f:
      json.dump(final, f, indent=2)
  return final


def _save(run, dstate, epoch: int, step_in_epoch: int, sums: _EpochMetrics) -> None:
  """Checkpoints the state at data position (epoch, step_in_epoch) after checking it is finite."""
  step = int(jax.device_get(run.par.unreplicate(dstate.step)))
  if not bool(_all_finite(dstate.params)):
    raise FloatingPointError(
        f"Non-finite parameters after step {step}. Training stopped without saving them; the "
        "latest checkpoint holds the last good state. Lower the learning rate or check the data.")
  run.sync.flush()
  run.ckpt.save(step, run.par.unreplicate(dstate),
                {"epoch": epoch, "step_in_epoch": step_in_epoch, "sums": sums.sums,
                 "steps": sums.steps, **_layout(run.config, run.par, run.spe)},
                sample=None if run.samples is None else run.samples.to_global(run.par.mesh))


def _train_epoch(run, dstate, epoch: int, start: int, sums: _EpochMetrics, stop: _StopRequest):
  """Runs the steps of `epoch` from `start`. Returns `(state, stopped, images/s)`, where `stopped`
  is the step within the epoch at which a signal stopped it (checkpoint saved), or 0."""
  config, spe = run.config, run.spe
  t0, done = time.time(), 0
  bar = tqdm.tqdm(total=spe, initial=start, desc=f"epoch {epoch + 1}/{config.num_epochs}",
                  disable=not run.is_main, dynamic_ncols=True, mininterval=1.0)
  single_process = jax.process_count() == 1
  if run.samples is not None and start == 0:
    run.samples.maybe_reset(config.method, epoch, config.seed)
  for step_in_epoch, (index, batch) in enumerate(feed(run, epoch, start), start):
    global_step = epoch * spe + step_in_epoch + 1
    dstate, metrics, sample_values = run.p_train(dstate, batch)
    run.sync.push(index, sample_values)
    sums.push(global_step, metrics)
    done += 1
    bar.update(1)
    every = config.checkpoint.every_steps
    want_ckpt = every > 0 and global_step % every == 0 and step_in_epoch + 1 < spe
    sync = want_ckpt or global_step % config.log_every_steps == 0
    stopping = (sync or single_process) and stop.requested()
    if sync or stopping:
      sums.flush(run.par)
      bar.set_postfix(loss=f"{sums.last['loss']:.3f}",
                      acc=f"{sums.last.get('accuracy', float('nan')):.3f}",
                      img_s=f"{done * config.data.batch_size / (time.time() - t0):.0f}")
      run.board.scalars(global_step, sums.last, "train/")
    if want_ckpt or stopping:
      _save(run, dstate, epoch, step_in_epoch + 1, sums)
    if stopping:
      bar.close()
      run.ckpt.wait()
      return dstate, step_in_epoch + 1, 0.0
  bar.close()
  run.sync.flush()
  sums.flush(run.par)
  return dstate, 0, done * config.data.batch_size / max(time.time() - t0, 1e-9)


def _evaluate(run, dstate, num_examples: int) -> dict[str, float]:
  """Accuracies of every evaluated role; names of roles other than the target are prefixed."""
  out = {}
  for role, p_eval in run.p_eval.items():
    batches = data.eval_batches(run.eval_split, batch_size=run.config.data.eval_batch_size,
                                process_index=jax.process_index(),
                                process_count=jax.process_count(), num_examples=num_examples)
    acc = evaluate.accuracies(batches, lambda b, f=p_eval: f(dstate, run.par.put_batch(b)),
                              fetch=run.par.host_sum)
    out.update({(k if role == "target" else f"{role}_{k}"): v for k, v in acc.items()})
  return out


def _end_epoch(run, dstate, epoch: int, sums: _EpochMetrics, rate: float) -> dict[str, float]:
  """Evaluates when due, appends the epoch record, checkpoints the next epoch's start. Returns
  the evaluation ({} when none was due). The last epoch evaluates the whole split."""
  config = run.config
  if not bool(_all_finite(dstate.params)):
    step = int(jax.device_get(run.par.unreplicate(dstate.step)))
    raise FloatingPointError(
        f"Non-finite parameters after step {step}. Training stopped before evaluating or "
        "saving them; the latest checkpoint holds the last good state.")
  record = {"epoch": epoch, "step": (epoch + 1) * run.spe,
            **{f"train_{k}": v for k, v in sums.means().items()}, "images_per_sec": rate}
  last = epoch + 1 == config.num_epochs
  evaluation = {}
  if last or (epoch + 1) % config.eval.every_epochs == 0:
    evaluation = _evaluate(run, dstate, 0 if last else config.eval.num_examples)
    record.update({f"eval_{k}": v for k, v in evaluation.items()})
    run.board.scalars(epoch + 1, evaluation, "eval/")
  if run.is_main:
    # Logged before the checkpoint so that a kill in between cannot lose the record; the epoch
    # is then re-run on resume and MetricsLog skips the record it already has.
    run.log.append(record)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in record.items()), flush=True)
  _save(run, dstate, epoch + 1, 0, _EpochMetrics())
  return evaluation
