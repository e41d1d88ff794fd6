"""The training loop: `train_and_evaluate(config, workdir)`.

It knows no method by name: the method registry supplies the loss, `train_step` the update and
`parallel` the mapping. A run in a workdir that has checkpoints resumes from the latest one (same
data position, same metric sums), so a killed run restarted with the same command ends exactly
where an uninterrupted run would. SIGTERM or Ctrl-C saves a checkpoint and stops cleanly. A
non-finite loss stops the run naming the step; no checkpoint is written after it.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import signal
import threading
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging

from regmix_jax import checkpointing, config as config_lib, data, evaluate, methods, models
from regmix_jax import parallel, reporting, train_state as ts_lib
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


def _prefetch(batches: Iterator[dict], put, size: int = 2) -> Iterator[dict]:
  """Puts up to `size` batches on device ahead of the one being consumed."""
  queue = collections.deque()
  for batch in batches:
    queue.append(put(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.array([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


class _EpochSums:
  """Host-side sums of per-step training metrics; checks every step's loss is finite."""

  def __init__(self, sums=None, steps=0):
    self.sums: dict[str, float] = dict(sums or {})
    self.steps = steps
    self.last: dict[str, float] = {}

  def add(self, pending: list[tuple[int, Any]], par) -> None:
    """Fetches the metrics of the steps in `pending` ((global step, device metrics))."""
    fetched = jax.device_get([par.unreplicate(m) for _, m in pending])
    for (step, _), metrics in zip(pending, fetched):
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
    pending.clear()

  def means(self) -> dict[str, float]:
    return {k: v / max(self.steps, 1) for k, v in self.sums.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the final
  evaluation accuracies ({attack name: fraction})."""
  config_lib.validate(config)
  par = parallel.DataParallel(config.parallel)
  config_lib.validate(config, par.num_devices)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  dataset = data.load_dataset(config.data)
  eval_split = dataset.test if config.eval.split == "test" else dataset.val
  method = methods.get_method(config.method.name)
  nets = build_models(config, method.roles, dataset.num_classes)
  loader = data.TrainLoader(dataset.train, batch_size=config.data.batch_size,
                            num_shards=par.num_devices, shard_ids=par.shard_ids, seed=config.seed)
  spe = loader.steps_per_epoch
  if spe == 0:
    raise ValueError(f"Config field `data.batch_size` = {config.data.batch_size} is larger than "
                     f"the training set ({len(dataset.train.y)} examples).")
  state = ts_lib.create_train_state(config, nets, dataset.image_shape, spe)

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.checkpoint.max_to_keep,
                                    async_save=config.checkpoint.async_save)
  meta = {"epoch": 0, "step_in_epoch": 0, "sums": {}, "steps": 0}
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(state)
    logging.info("Resumed from step %d (epoch %d, step %d of it).", int(state.step),
                 meta["epoch"], meta["step_in_epoch"])
    if is_main:
      print(f"Resuming from {ckpt.directory}/{int(state.step)} "
            f"(epoch {meta['epoch'] + 1}, step {meta['step_in_epoch']}).", flush=True)

  bound = bind_method(method.loss, nets, config.method)
  p_train = par.map(functools.partial(train_step, method=bound, augment=config.data.augment,
                                      ema_decay=config.ema.decay),
                    donate_state=jax.default_backend() != "cpu")
  attack_list = evaluate.parse_attacks(config.eval.attacks, epsilon=config.eval.epsilon,
                                       step_size=config.eval.step_size)
  p_eval = par.map(functools.partial(evaluate.eval_step, model=nets["target"],
                                     attack_list=attack_list), donate_state=False)

  def run_eval(dstate) -> dict[str, float]:
    batches = data.eval_batches(eval_split, batch_size=config.data.eval_batch_size,
                                process_index=jax.process_index(),
                                process_count=jax.process_count(),
                                num_examples=config.eval.num_examples)
    return evaluate.accuracies(batches, lambda b: p_eval(dstate, par.put_batch(b)))

  log = reporting.MetricsLog(os.path.join(workdir, "metrics.jsonl")) if is_main else None
  board = reporting.TensorBoard(os.path.join(workdir, "tensorboard") if is_main else None)
  stop_signal = []
  handlers = {}
  if threading.current_thread() is threading.main_thread():
    for sig in (signal.SIGTERM, signal.SIGINT):
      handlers[sig] = signal.signal(sig, lambda signum, _: stop_signal.append(signum))

  def save(dstate, epoch, step_in_epoch, sums: _EpochSums):
    step = int(jax.device_get(par.unreplicate(dstate.step)))
    if not bool(_all_finite(dstate.params)):
      raise FloatingPointError(
          f"Non-finite parameters after step {step}. Training stopped without saving them; the "
          "latest checkpoint holds the last good state. Lower the learning rate or check the data.")
    ckpt.save(step, par.get_state(dstate),
              {"epoch": epoch, "step_in_epoch": step_in_epoch, "sums": sums.sums,
               "steps": sums.steps})

  dstate = par.put_state(state)
  del state
  final: dict[str, float] = {}
  try:
    for epoch in range(meta["epoch"], config.num_epochs):
      start = meta["step_in_epoch"] if epoch == meta["epoch"] else 0
      sums = _EpochSums(meta["sums"], meta["steps"]) if start else _EpochSums()
      pending: list[tuple[int, Any]] = []
      t0, done, last_of_epoch = time.time(), 0, False
      bar = tqdm.tqdm(total=spe, initial=start, desc=f"epoch {epoch + 1}/{config.num_epochs}",
                      disable=not is_main, dynamic_ncols=True, mininterval=1.0)
      batches = _prefetch(loader.epoch(epoch, start), par.put_batch)
      for step_in_epoch, batch in enumerate(batches, start):
        global_step = epoch * spe + step_in_epoch + 1
        dstate, metrics = p_train(dstate, batch)
        pending.append((global_step, metrics))
        done += 1
        last_of_epoch = step_in_epoch + 1 == spe
        every = config.checkpoint.every_steps
        want_ckpt = every > 0 and global_step % every == 0 and not last_of_epoch
        if want_ckpt or stop_signal or global_step % config.log_every_steps == 0:
          sums.add(pending, par)
          rate = done * config.data.batch_size / (time.time() - t0)
          bar.set_postfix(loss=f"{sums.last['loss']:.3f}",
                          acc=f"{sums.last.get('accuracy', float('nan')):.3f}",
                          img_s=f"{rate:.0f}")
          board.scalars(global_step, sums.last, "train/")
        bar.update(1)
        if want_ckpt or (stop_signal and not last_of_epoch):
          save(dstate, epoch, step_in_epoch + 1, sums)
        if stop_signal:
          break
      bar.close()
      sums.add(pending, par)
      if stop_signal and not last_of_epoch:
        ckpt.wait()
        if is_main:
          print(f"Stopped by signal {stop_signal[0]} at step {global_step}; the checkpoint is "
                "saved. Run the same command to resume.", flush=True)
        break
      elapsed = time.time() - t0
      record = {"epoch": epoch, "step": (epoch + 1) * spe,
                **{f"train_{k}": v for k, v in sums.means().items()},
                "time": elapsed, "images_per_sec": done * config.data.batch_size / elapsed}
      if (epoch + 1) % config.eval.every_epochs == 0 or epoch + 1 == config.num_epochs:
        final = run_eval(dstate)
        record.update({f"eval_{k}": v for k, v in final.items()})
        board.scalars(epoch + 1, final, "eval/")
      if is_main:
        log.append(record)  # before the checkpoint: a re-run epoch is not logged twice
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in record.items()), flush=True)
      save(dstate, epoch + 1, 0, _EpochSums())
      if stop_signal:
        break
    else:
      if not final:  # nothing left to train (a finished run started again): evaluate only
        final = run_eval(dstate)
  finally:
    ckpt.close()
    board.close()
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  if is_main and final:
    print("\n" + reporting.summary_table(log.records), flush=True)
    print("final (" + config.eval.split + "): " +
          ", ".join(f"{k} {100 * v:.2f}%" for k, v in final.items()), flush=True)
    with open(os.path.join(workdir, "final_eval.json"), "w") as f:
      json.dump(final, f, indent=2)
  return final
