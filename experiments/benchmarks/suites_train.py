"""The `train`, `pipeline` and `torch` suites: the library's train step as the CLI runs it
(`run_train`), and the PyTorch eager steps it is compared with (`run_torch`)."""

from __future__ import annotations

import functools
import itertools
import time

import jax
import numpy as np

from regmix_jax import cpu, data as data_lib, train

import harness


class Stepper:
  """Runs `trainer.train_step` on the same batch again and again (`pipeline=False`: the batch
  stays on the devices) or on `trainer.batches`, epoch after epoch, with the per-example state
  written back as the training loop does (`pipeline=True`)."""

  def __init__(self, trainer: train.Trainer, pipeline: bool):
    self.trainer, self.pipeline = trainer, pipeline
    self.device_state = trainer.data_parallel.put_state(trainer.create_state())
    if pipeline:
      self.batches = itertools.chain.from_iterable(trainer.batches(e) for e in itertools.count())
    else:
      self.batches = itertools.repeat(next(trainer.batches(0)))
    self.metrics = None

  def __call__(self, n: int) -> float:
    """Runs `n` steps; returns their wall seconds, up to the last one's end."""
    start = time.perf_counter()
    for _ in range(n):
      index, batch = next(self.batches)
      self.device_state, self.metrics, values = self.trainer.train_step(self.device_state, batch)
      if self.pipeline:
        self.trainer.sample_sync.push(index, values)
    self.trainer.sample_sync.flush()
    jax.block_until_ready(self.device_state)
    return time.perf_counter() - start


def run_train(method, model, variant, data, blocks, block_steps, pipeline,
              convolutions: cpu.Convolutions | None = None) -> dict:
  """Compiles (first step), then times `blocks` blocks of `block_steps` steps on a resident batch;
  with `pipeline`, alternates them with blocks fed by the real input pipeline, so both see the
  same machine load. Rates are from the median block (this shared machine's speed varies). The
  models' convolutions: `convolutions` (default `harness.convolutions`, the variant's)."""
  counter = harness.CompileCounter()
  config = harness.load_config(method, model, variant, data)
  trainer = train.build_trainer(config, convolutions or harness.convolutions(config, variant))
  steppers = {"resident": Stepper(trainer, pipeline=False)}
  if pipeline:
    steppers["pipeline"] = Stepper(trainer, pipeline=True)
  mark = counter.mark()
  first = steppers["resident"](1)
  compile_stats = counter.since(mark)
  if pipeline:
    steppers["pipeline"](1)
  mark = counter.mark()
  times = {name: [] for name in steppers}
  for _ in range(blocks):
    for name, stepper in steppers.items():
      times[name].append(stepper(block_steps))
  later = counter.since(mark)  # before the fetch below, which compiles an indexing op
  loss = float(np.asarray(
      trainer.data_parallel.unreplicate(steppers["resident"].metrics)["loss"]))
  rate = {name: block_steps * harness.BATCH / float(np.median(t)) for name, t in times.items()}
  out = {"images_per_s": rate["resident"], "step_s": harness.BATCH / rate["resident"],
         "best_images_per_s": block_steps * harness.BATCH / min(times["resident"]),
         "block_s": times, "first_step_s": first, "compile_s": compile_stats["compile_s"],
         "first_step_compiles": compile_stats["compiles"], "later_compiles": later["compiles"],
         "later_traces": later["traces"], "timed_steps": blocks * block_steps,
         "loss": loss, "devices": jax.device_count(),
         "convolutions": trainer.convolutions.name,
         "onednn_min_size": harness.onednn_min_size(trainer.convolutions)}
  if pipeline:
    out.update(pipeline_images_per_s=rate["pipeline"],
               pipeline_ratio=rate["pipeline"] / rate["resident"])
  return out


def run_torch(model, threads, data, blocks, block_steps, dtype="float32",
              method="fgsm_pgk", channels_last=False) -> dict:
  """Times the eager PyTorch step of `method` (`torch_step`)."""
  # torch is no dependency of the library: imported only by the cases that run it.
  import torch  # pylint: disable=g-import-not-at-top
  step = torch_step(model, threads, data, dtype, method, channels_last)
  times = []
  for i in range(blocks + 1):
    start = time.perf_counter()
    for _ in range(1 if i == 0 else block_steps):  # block 0: the first step alone
      loss = step()
    times.append(time.perf_counter() - start)
  rate = block_steps * harness.BATCH / float(np.median(times[1:]))
  return {"images_per_s": rate, "step_s": harness.BATCH / rate,
          "best_images_per_s": block_steps * harness.BATCH / min(times[1:]),
          "block_s": times[1:], "first_step_s": times[0], "timed_steps": blocks * block_steps,
          "loss": None if loss is None else float(loss), "method": method,
          "threads": threads, "torch": torch.__version__, "dtype": dtype,
          "layout": "channels_last" if channels_last else "NCHW"}


def torch_step(model, threads, data, dtype="float32", method="fgsm_pgk", channels_last=False):
  """The eager PyTorch step of `method` (a `harness.TORCH_STEPS` key) on the JAX cases' batch, as
  a function of no arguments returning the loss; `dtype="bfloat16"` runs it under
  `torch.autocast("cpu", dtype=torch.bfloat16)` (what a PyTorch user does for bf16 on a CPU;
  FGSM-PGK: its forward passes); `channels_last`: the model and the images in
  `torch.channels_last` memory format (what a PyTorch user tuning for CPU picks: oneDNN's
  preferred layout)."""
  import torch  # pylint: disable=g-import-not-at-top  (no library dependency)
  import torch_reference  # pylint: disable=g-import-not-at-top  (it imports torch)
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  config = harness.load_config("fgsm_pgk", model, {"devices": 1}, data)
  dataset = data_lib.load_dataset(config.data)
  loader = data_lib.TrainLoader(dataset.train, batch_size=harness.BATCH, num_shards=1,
                                shard_ids=[0], seed=config.seed)
  batch = next(loader.epoch(0))  # the JAX cases' batch (their 1dev layout; 2dev splits it)
  x = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2))).float() / 255
  y = torch.from_numpy(batch["label"].astype(np.int64))
  net = torch_reference.MODELS[model](dataset.num_classes)
  if channels_last:
    net = net.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  autocast = torch.bfloat16 if dtype == "bfloat16" else None
  if method == "fgsm_pgk":
    fgsm_pgk = torch_reference.FGSMPGKStep(net, autocast_dtype=autocast)
    state = {"prior": ((torch.randint(0, 2, x.shape).float() * 2 - 1) * (8 / 255)).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format),
             "momentum": torch.zeros_like(x)}

    def step():
      loss, state["prior"], state["momentum"] = fgsm_pgk(x, y, state["prior"], state["momentum"])
      return loss
  else:
    other = {"pgd_at": torch_reference.PGDATStep,
             "pgd_at_same_work": functools.partial(torch_reference.PGDATStep, same_work=True),
             "trades": torch_reference.TRADESStep,
             "trades_same_work": functools.partial(torch_reference.TRADESStep, same_work=True)}
    step = functools.partial(other[method](net, autocast_dtype=autocast), x, y)
  return step
