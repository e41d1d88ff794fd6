"""Speed of regmix_jax on this machine, and of a PyTorch eager FGSM-PGK step beside it.

Measures, at batch 128 on real CIFAR-10 images (the subset's first shuffled batch):
  train     images/s of the train step (`train.build_trainer`'s `p_train`, what the CLI runs) for
            each method and model, the batch already on the devices (median of timed blocks;
            see `block_plan`); the first step's wall time
            and XLA compile time; compiles and traces in steps 2..N (should be 0); peak host RSS.
  pipeline  the same step fed by the real input pipeline (`train.feed`: shuffled loader, the
            method's per-example state gathered and written back, two batches put ahead), in
            blocks alternating with blocks on a resident batch in the same process.
  torch     the PyTorch eager step of each method in --methods that has one
            (`torch_reference`: FGSM-PGK; PGD-AT and TRADES both as released and doing the same
            work as ours, `TORCH_STEPS`) on the same batch.
  eval      PGD-20 as the training loop evaluates (`evaluate.eval_step`, 3 batches incl. a padded
            one: one compile), and AutoAttack's worst case: every point stays robust to the end,
            so every attack runs its full budget on every point (a model with logits
            `1e-6 * f(x) + 10 * onehot(0)` and label 0: all the network's work, no early exit).
  micro     one convolution's forward pass, input gradient and kernel gradient on one device;
            the latency of one in-process all-reduce between 2 host devices (sync BatchNorm's).

Each case runs in its own Python process (its compile, peak memory and XLA flags are its own),
one at a time, each train case right next to the PyTorch steps it is compared with; results go
to a JSON file keyed by case, so a stopped run resumes, and then to a markdown table.
`--rounds=N` runs the compared cases N times, alternating which side of a pair goes first,
and reports medians and every round's ratio (`schedule`). Take N even: here the side that ran
first was faster by about 4% on average (2026-11-28, results/benchmark_steps_cpu.notes.md).
Variants name the device count, the mapping, the dtype and XLA flags (VARIANTS).

  python experiments/benchmark.py --data=../shared/data/cifar10_subset.npz            # all
  python experiments/benchmark.py --suites=train --models=resnet18 --variants=1dev,2dev
  python experiments/benchmark.py --suites=torch,train --methods=fgsm_pgk --models=resnet18 --rounds=6

torch is imported only by the `torch` cases (pip install torch==2.13.0; not a dependency).
Importing JAX starts no backend: each child sets its device count and XLA flags (`child`) before
its first computation.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from regmix_jax import attacks, config as config_lib, data as data_lib, evaluation, fast_conv
from regmix_jax import onednn, runtime, train

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import DEFAULT_DATA, require_data  # pylint: disable=g-import-not-at-top,wrong-import-position

METHODS = ("fgsm_pgk", "fgsm_agr", "d2r", "trades", "pgd_at")
MODELS = ("small_cnn", "resnet18", "preact_resnet18")
BATCH = 128
AA_POINTS = 32  # AutoAttack's worst case costs ~2,000 forward-backward passes per point
YNN_ALL = f"{runtime.YNN_FLAG}={','.join(runtime.YNN_FUSION_TYPES)}"
NO_YNN = f"{runtime.YNN_FLAG}="
# name -> devices (host CPU devices), parallel ("pmap" | "shard_map"), dtype, xla (XLA_FLAGS),
# ynn (`config.cpu_ynn_fusion_type`; the config's default when absent).
VARIANTS = {
    "1dev": dict(devices=1),
    "2dev": dict(devices=2),
    "2dev-shard_map": dict(devices=2, parallel="shard_map"),
    "2dev-bf16": dict(devices=2, dtype="bfloat16"),
    # XLA:CPU library back-ends (jaxlib 0.10.2): YNNPACK for convolutions, dots, elementwise
    # and reductions; oneDNN thunks for convolutions and dots; XNNPACK.
    "1dev-ynn": dict(devices=1, xla=YNN_ALL),
    "2dev-ynn": dict(devices=2, xla=YNN_ALL),
    "2dev-onednn": dict(devices=2, xla="--xla_cpu_use_onednn=true"),
    "2dev-xnn": dict(devices=2, xla="--xla_cpu_use_xnnpack=true"),
    "2dev-fastmath": dict(devices=2, xla="--xla_cpu_enable_fast_math=true"),
    # Each device's ops on one thread (no oversubscription of the 2 cores by 2 devices).
    "2dev-eigen1": dict(devices=2, xla="--xla_cpu_multi_thread_eigen=false"),
    # No YNNPACK fusions at all (jaxlib 0.10.2 sends convolutions to YNNPACK by default): XLA's
    # own (Eigen) convolutions.
    "1dev-noynn": dict(devices=1, xla=NO_YNN),
    "2dev-noynn": dict(devices=2, xla=NO_YNN),
    "2dev-noynn-eigen1": dict(devices=2, xla=NO_YNN + " --xla_cpu_multi_thread_eigen=false"),
    # XLA's default YNNPACK fusions (convolutions included), which every record before
    # 2026-11-24 ran with; the library now sets `config.cpu_ynn_fusion_type` ("reduce").
    "1dev-xladefault": dict(devices=1, ynn="default"),
    "2dev-xladefault": dict(devices=2, ynn="default"),
    # BatchNorm statistics per device (no collective per BN layer); changes the results.
    "2dev-localbn": dict(devices=2, local_bn=True),
    # Mixed precision and the CPU back-ends that might run its bf16 convolutions natively
    # (2026-11-27): YNNPACK for convolutions too, oneDNN, XNNPACK.
    "1dev-bf16": dict(devices=1, dtype="bfloat16"),
    "1dev-ynnconv": dict(devices=1, ynn="reduce,individual_convolution"),
    "2dev-ynnconv": dict(devices=2, ynn="reduce,individual_convolution"),
    "2dev-bf16-ynnconv": dict(devices=2, dtype="bfloat16", ynn="reduce,individual_convolution"),
    "1dev-onednn": dict(devices=1, xla="--xla_cpu_use_onednn=true"),
    "2dev-bf16-onednn": dict(devices=2, dtype="bfloat16", xla="--xla_cpu_use_onednn=true"),
    "1dev-xnn": dict(devices=1, xla="--xla_cpu_use_xnnpack=true"),
    # Matrix products to YNNPACK as well (2026-11-28): its bf16 products use AVX512-BF16, where
    # Eigen's, under the default `reduce`, run slower than in fp32 (`--suites=dtype`).
    "2dev-ynndot": dict(devices=2, ynn="reduce,individual_dot"),
    "2dev-bf16-ynndot": dict(devices=2, dtype="bfloat16", ynn="reduce,individual_dot"),
    # Convolutions with input maps >= 16 wide on oneDNN through an FFI call
    # (`config.cpu_convolutions="onednn"`, 2026-11-28; needs `pip install ".[onednn]"`).
    "2dev-dnnl": dict(devices=2, convolutions="onednn"),
    "1dev-dnnl": dict(devices=1, convolutions="onednn"),
    "2dev-bf16-dnnl": dict(devices=2, dtype="bfloat16", convolutions="onednn"),
    # XLA's own convolutions whatever the config's default (since 2026-11-28 "auto": oneDNN's on
    # x86-64 CPUs with AVX-512 where installed). The variants without `convolutions` run the
    # config's default; each record says what ran (`convolutions`), and records without it ran
    # XLA's (they predate the field).
    "2dev-xla": dict(devices=2, convolutions="xla"),
    # oneDNN for input maps >= 8 wide (`onednn.MIN_SIZE` is 16): ResNet's third stage too.
    "2dev-dnnl8": dict(devices=2, convolutions="onednn", onednn_min_size=8),
    "1dev-xla": dict(devices=1, convolutions="xla"),
    "2dev-bf16-xla": dict(devices=2, dtype="bfloat16", convolutions="xla"),
}
# The CPU features that decide how bf16 can run: AVX512-BF16 (bf16 dot products in vector
# registers) and AMX (bf16 matrix tiles).
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
# Attempts recorded in results/benchmark_cpu.json whose code is no longer here (not kept): kernel
# gradients as patch GEMMs (`*-gemmgrad`) or, for 3x3 stride-1 convolutions on maps of 16x16 and
# more, as 9 shifted dots (`*-tapsgrad`), both swapped into the models' convolutions; their code
# is `custom_kernel_grad_conv` / `_use_custom_kernel_grad` in this file at commit 710c77f.
RETIRED_VARIANTS = {
    "1dev-gemmgrad": "1 CPU device(s), pmap, float32, kernel gradients as patch GEMMs",
    "2dev-gemmgrad": "2 CPU device(s), pmap, float32, kernel gradients as patch GEMMs",
    "1dev-tapsgrad": "1 CPU device(s), pmap, float32, 3x3 stride-1 kernel gradients as 9 shifted dots",
    "2dev-tapsgrad": "2 CPU device(s), pmap, float32, 3x3 stride-1 kernel gradients as 9 shifted dots",
}
DEFAULT_VARIANTS = {"train": ("2dev",), "pipeline": ("2dev",), "eval": ("2dev",)}
COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration",
                  "/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", default=DEFAULT_DATA)
  p.add_argument("--suites", default="train,pipeline,torch,eval,micro")
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--models", default=",".join(MODELS))
  p.add_argument("--variants", default="", help="train/eval variants (default 2dev; see VARIANTS)")
  p.add_argument("--blocks", type=int, default=0, help="timed blocks per case (see block_plan)")
  p.add_argument("--block_steps", type=int, default=0, help="steps per timed block")
  p.add_argument("--torch_threads", default="2")
  p.add_argument("--results", default=os.path.join(HERE, "results", "benchmark_cpu.json"))
  p.add_argument("--markdown", default=os.path.join(HERE, "results", "benchmark_cpu.md"))
  p.add_argument("--force", action="store_true", help="rerun cases already in --results")
  p.add_argument("--rounds", type=int, default=1,
                 help="run the compared cases this many times, each train case next to its "
                      "PyTorch steps, the pair's order alternating (see `schedule`; take it "
                      "even); rates are medians")
  p.add_argument("--case", default="", help=argparse.SUPPRESS)  # internal: run one case here
  return p.parse_args(argv)


# ------------------------------------------------------------------------------ in the child


class CompileCounter:
  """Counts JAX traces / lowerings / XLA compiles and their seconds (jax.monitoring events)."""

  def __init__(self):
    self.events: list[tuple[str, float]] = []
    jax.monitoring.register_event_duration_secs_listener(self._record)

  def _record(self, event, duration, **kwargs):
    del kwargs
    if event in COMPILE_EVENTS:
      self.events.append((event, duration))

  def mark(self) -> int:
    return len(self.events)

  def since(self, mark: int) -> dict:
    new = self.events[mark:]
    return {"compiles": sum(e == COMPILE_EVENTS[0] for e, _ in new),
            "traces": sum(e == COMPILE_EVENTS[1] for e, _ in new),
            "compile_s": sum(d for _, d in new)}


def taps_kernel_grad_conv(lhs, rhs, window_strides, padding):
  """`lax.conv_general_dilated` (NHWC, HWIO) whose kernel gradient, for a 3x3 stride-1 'same'
  convolution on a map of at least 16x16, is nine dots `X_s^T @ dY` over the flattened padded
  image, where `X_s` is the image shifted by tap s's offset (a contiguous row slice) and dY is
  zero in the padding, so wrapped rows add nothing; XLA's kernel gradient for any other
  convolution. The micro suite times it beside XLA's (an attempt, not library code)."""
  strides, pads = tuple(window_strides), tuple(tuple(p) for p in padding)
  conv = functools.partial(jax.lax.conv_general_dilated, window_strides=strides, padding=pads,
                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
  kh, kw, c, o = rhs.shape
  n, h, w_, _ = lhs.shape
  if not ((kh, kw) == (3, 3) and strides == (1, 1) and pads == ((1, 1), (1, 1))
          and h >= 16 and w_ >= 16):
    return conv(lhs, rhs)

  def kernel_grad_taps(x, dy):
    rows = n * (h + 2) * (w_ + 2)
    xf = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(rows, c)
    xf = jnp.pad(xf, ((0, 2 * (w_ + 2) + 2), (0, 0)))
    dyf = jnp.pad(dy, ((0, 0), (0, 2), (0, 2), (0, 0))).reshape(rows, o)
    return jnp.stack([
        jax.lax.dot_general(xf[i * (w_ + 2) + j:i * (w_ + 2) + j + rows], dyf,
                            (((0,), (0,)), ((), ())))
        for i in range(3) for j in range(3)])

  @jax.custom_vjp
  def f(x, w):
    return conv(x, w)

  def fwd(x, w):
    return conv(x, w), (x, w)

  def bwd(res, dy):
    x, w = res
    dx = jax.vjp(lambda x_: conv(x_, w), x)[1](dy)[0]
    return dx, kernel_grad_taps(x, dy).reshape(kh, kw, c, o).astype(w.dtype)

  f.defvjp(fwd, bwd)
  return f(lhs, rhs)


def load_config(method: str, model: str, variant: dict, data: str):
  """`configs/cifar10/<method>.py` at batch 128 on the subset, with `model` as the target, as the
  command line would build it (`config.from_command_line`). D2R's guide is small_cnn width 16 for
  every target (the config's LBGAT ResNet-18 guide, made for a WRN-34-10 target, costs more than
  a ResNet-18 target: stride 1 in its second stage)."""
  overrides = {"data.source": "files", "data.dir": data, "data.batch_size": BATCH,
               "data.eval_batch_size": BATCH, "model.name": model,
               "cpu_devices": variant["devices"], "parallel": variant.get("parallel", "pmap"),
               "model.dtype": variant.get("dtype", "float32"),
               "model.sync_batch_norm": not variant.get("local_bn", False)}
  if "convolutions" in variant:
    overrides["cpu_convolutions"] = variant["convolutions"]
  if model == "small_cnn":
    overrides["model.width"] = 32
  if method == "d2r":
    overrides.update({"guide_model.name": "small_cnn", "guide_model.width": 16})
  return config_lib.from_command_line(os.path.join(ROOT, "configs", "cifar10", f"{method}.py"),
                                      [f"--config.{k}={v}" for k, v in overrides.items()])


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


def run_train(method, model, variant, data, blocks, block_steps, pipeline) -> dict:
  """Compiles (first step), then times `blocks` blocks of `block_steps` steps on a resident batch;
  with `pipeline`, alternates them with blocks fed by the real input pipeline, so both see the
  same machine load. Rates are from the median block (this shared machine's speed varies)."""
  counter = CompileCounter()
  trainer = train.build_trainer(load_config(method, model, variant, data))
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
  rate = {name: block_steps * BATCH / float(np.median(t)) for name, t in times.items()}
  out = {"images_per_s": rate["resident"], "step_s": BATCH / rate["resident"],
         "best_images_per_s": block_steps * BATCH / min(times["resident"]),
         "block_s": times, "first_step_s": first, "compile_s": compile_stats["compile_s"],
         "first_step_compiles": compile_stats["compiles"], "later_compiles": later["compiles"],
         "later_traces": later["traces"], "timed_steps": blocks * block_steps,
         "loss": loss, "devices": jax.device_count(),
         "convolutions": fast_conv.cpu_convolutions()}
  if pipeline:
    out.update(pipeline_images_per_s=rate["pipeline"],
               pipeline_ratio=rate["pipeline"] / rate["resident"])
  return out


# PyTorch eager steps (`torch_reference`) -> the regmix_jax method each is the reference of.
TORCH_STEPS = {"fgsm_pgk": "fgsm_pgk", "pgd_at": "pgd_at", "pgd_at_same_work": "pgd_at",
               "trades": "trades", "trades_same_work": "trades"}


def torch_case(method: str, model: str, threads: str, dtype: str | None = None) -> str:
  """The case name of a PyTorch step: `torch:<model>:<threads>[:bfloat16]` for FGSM-PGK (the
  name its earlier records carry), `torch-<step>:<model>:<threads>[:bfloat16]` for the others."""
  kind = "torch" if method == "fgsm_pgk" else f"torch-{method}"
  return ":".join([kind, model, threads] + ([dtype] if dtype else []))


def is_torch_step(case: str) -> bool:
  """Whether a case name is a PyTorch step's (`torch_case`)."""
  return case.startswith(("torch:", "torch-"))


def torch_step_of(case: str) -> str:
  """The `TORCH_STEPS` key of a PyTorch case name (`torch_case`)."""
  kind = case.split(":")[0]
  return "fgsm_pgk" if kind == "torch" else kind[len("torch-"):]


def run_torch(model, threads, data, blocks, block_steps, dtype="float32",
              method="fgsm_pgk") -> dict:
  """The eager PyTorch step of `method` (a `TORCH_STEPS` key); `dtype="bfloat16"` runs it under
  `torch.autocast("cpu", dtype=torch.bfloat16)` (what a PyTorch user does for bf16 on a CPU;
  FGSM-PGK: its forward passes)."""
  # torch is no dependency of the library: imported only by the cases that run it.
  import torch  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  config = load_config("fgsm_pgk", model, {"devices": 1}, data)
  dataset = data_lib.load_dataset(config.data)
  loader = data_lib.TrainLoader(dataset.train, batch_size=BATCH, num_shards=1, shard_ids=[0],
                                seed=config.seed)
  batch = next(loader.epoch(0))  # the JAX cases' batch (their 1dev layout; 2dev splits it)
  x = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2))).float() / 255
  y = torch.from_numpy(batch["label"].astype(np.int64))
  net = torch_reference.MODELS[model](dataset.num_classes)
  autocast = torch.bfloat16 if dtype == "bfloat16" else None
  if method == "fgsm_pgk":
    fgsm_pgk = torch_reference.FGSMPGKStep(net, autocast_dtype=autocast)
    state = {"prior": (torch.randint(0, 2, x.shape).float() * 2 - 1) * (8 / 255),
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
  times = []
  for i in range(blocks + 1):
    start = time.perf_counter()
    for _ in range(1 if i == 0 else block_steps):  # block 0: the first step alone
      loss = step()
    times.append(time.perf_counter() - start)
  rate = block_steps * BATCH / float(np.median(times[1:]))
  return {"images_per_s": rate, "step_s": BATCH / rate,
          "best_images_per_s": block_steps * BATCH / min(times[1:]), "block_s": times[1:],
          "first_step_s": times[0], "timed_steps": blocks * block_steps,
          "loss": None if loss is None else float(loss), "method": method,
          "threads": threads, "torch": torch.__version__, "dtype": dtype}


def run_eval(attack, model, variant, data) -> dict:
  counter = CompileCounter()
  trainer = train.build_trainer(load_config("pgd_at", model, variant, data))
  data_parallel = trainer.data_parallel
  device_state = data_parallel.put_state(trainer.create_state())
  net = trainer.models["target"]
  if attack == "pgd20":
    n = 2 * BATCH + BATCH // 2  # 3 batches, the last one padded
    fn = data_parallel.map(functools.partial(
        evaluation.eval_step, model=net, role="target",
        attack_list=attacks.parse_attacks("pgd20")), donate_state=False, per_device_outputs=True)
  elif attack == "aa-worst":
    n = AA_POINTS

    def aa_step(state, batch, *, axis_name):
      del axis_name
      variables = state.eval_variables("target")
      pinned = 10.0 * jax.nn.one_hot(0, 10)
      logits_fn = lambda x: 1e-6 * net.apply(variables, x, train=False) + pinned
      x = batch["image"].astype(jnp.float32) / 255.0
      labels = jnp.zeros_like(batch["label"])
      _, robust = attacks.autoattack(logits_fn, x, labels, jax.random.key(0), epsilon=8 / 255)
      return {"aa": robust.sum()[None], "count": batch["mask"].sum()[None]}
    fn = data_parallel.map(aa_step, donate_state=False, per_device_outputs=True)
  else:
    raise ValueError(f"unknown eval attack {attack!r}")
  mark, counts, seconds = counter.mark(), [], []
  size = min(n, BATCH)
  for b in data_lib.eval_batches(trainer.dataset.test, batch_size=size, num_examples=n):
    start = time.perf_counter()
    counts.append(data_parallel.host_sum(fn(device_state, data_parallel.put_batch(b))))
    seconds.append(time.perf_counter() - start)
  stats = counter.since(mark)
  # Rows computed per second (a padded batch costs a full one) after the first batch, which
  # compiles; with a single batch (aa-worst), its time less the compile time.
  rate = ((len(seconds) - 1) * size / sum(seconds[1:]) if len(seconds) > 1
          else size / (seconds[0] - stats["compile_s"]))
  return {"images_per_s": rate, "batch_s": seconds, "examples": n, "batches": len(counts),
          "compiles": stats["compiles"], "traces": stats["traces"],
          "compile_s": stats["compile_s"], "devices": jax.device_count(),
          "counts": {k: float(sum(c[k] for c in counts)) for k in counts[0]},
          "convolutions": fast_conv.cpu_convolutions()}


def best_seconds(fn, args, repeats: int) -> float:
  """The fastest of `repeats` calls of `fn(*args)`, after one call that compiles."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def run_conv_micro() -> dict:
  """Milliseconds (best of 3) of one convolution's forward pass, input gradient and kernel
  gradient on one device, batch 128: the 3x3 stride-1 convolutions of ResNet-18's four stages
  (with the kernel gradient as nine shifted dots, `taps_kernel_grad_conv`, beside XLA's) and its
  first stride-2 and 1x1 shortcut convolutions."""
  out = {}
  shapes = [(32, 64, 64, 3, 1), (16, 128, 128, 3, 1), (8, 256, 256, 3, 1), (4, 512, 512, 3, 1),
            (32, 64, 128, 3, 2), (32, 64, 128, 1, 2)]  # (map size, in, out, kernel, stride)
  for hw, cin, cout, k, stride in shapes:
    rng = np.random.RandomState(0)
    x = jax.numpy.asarray(rng.rand(BATCH, hw, hw, cin), np.float32)
    w = jax.numpy.asarray(rng.rand(k, k, cin, cout) * 0.01, np.float32)
    args = ((stride, stride), [(k // 2, k // 2)] * 2)
    conv = lambda x, w, a=args: jax.lax.conv_general_dilated(
        x, w, *a, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    taps = lambda x, w, a=args: taps_kernel_grad_conv(x, w, *a)
    fns = {"forward": conv, "input_grad": jax.grad(lambda x, w, c=conv: c(x, w).sum()),
           "kernel_grad": jax.grad(lambda x, w, c=conv: c(x, w).sum(), argnums=1)}
    if stride == 1 and hw >= 16:
      fns["kernel_grad as 9 shifted dots"] = jax.grad(lambda x, w, c=taps: c(x, w).sum(), argnums=1)
    for name, fn in fns.items():
      out[f"{k}x{k} s{stride} {hw}x{hw} {cin}->{cout} {name}"] = 1000 * best_seconds(
          jax.jit(fn), (x, w), 3)
  return {"ms": out}


# `run_dtype_micro`'s matrix products ([M, K] x [K, N]): the first-stage layer's as one product
# over its 9 taps (M = batch x 32 x 32), and the last stage's (batch x 4 x 4, 9 x 512, 512).
DTYPE_PRODUCTS = ((BATCH * 32 * 32, 9 * 64, 64), (BATCH * 16, 9 * 512, 512))


def shifted_products_conv(x, w):
  """A 3x3 stride-1 'same' convolution (NHWC, HWIO) as 9 matrix products of the shifted input with
  each tap's [in, out] kernel, accumulated in float32 and cast back to `x.dtype`."""
  h, w_ = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(jnp.einsum("bhwc,co->bhwo", xp[:, i:i + h, j:j + w_], w[i, j],
                        preferred_element_type=jnp.float32)
             for i in range(3) for j in range(3)).astype(x.dtype)


def run_dtype_micro() -> dict:
  """Milliseconds (best of 3) on one device in float32 and bfloat16 (inputs and kernel cast,
  output kept in the dtype), under the case's XLA flags: ResNet-18's first-stage convolution
  (batch 128, 32x32x64 -> 64, 3x3) forward, input gradient and kernel gradient; its last stage's
  (4x4x512 -> 512) forward as one convolution and as 9 shifted matrix products
  (`shifted_products_conv`); and the bare matrix products of `DTYPE_PRODUCTS` (float32
  accumulation). Whether XLA:CPU's bf16 products or convolutions use the CPU's bf16 units."""
  out = {}
  rng = np.random.RandomState(0)
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2,
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x32 = jnp.asarray(rng.rand(BATCH, 32, 32, 64), np.float32)
  w32 = jnp.asarray(rng.rand(3, 3, 64, 64) * 0.01, np.float32)
  deep_x32 = jnp.asarray(rng.rand(BATCH, 4, 4, 512), np.float32)
  deep_w32 = jnp.asarray(rng.rand(3, 3, 512, 512) * 0.01, np.float32)
  products = [(jnp.asarray(rng.rand(m, k), np.float32), jnp.asarray(rng.rand(k, n), np.float32))
              for m, k, n in DTYPE_PRODUCTS]
  product = lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)
  for dtype in (jnp.float32, jnp.bfloat16):
    name = jnp.dtype(dtype).name
    x, w = x32.astype(dtype), w32.astype(dtype)
    fns = {"forward": conv, "input_grad": jax.grad(lambda x, w: conv(x, w).astype(jnp.float32)
                                                   .sum()),
           "kernel_grad": jax.grad(lambda x, w: conv(x, w).astype(jnp.float32).sum(), argnums=1)}
    for kind, fn in fns.items():
      out[f"{name} {kind}"] = 1000 * best_seconds(jax.jit(fn), (x, w), 3)
    deep = (deep_x32.astype(dtype), deep_w32.astype(dtype))
    out[f"{name} 4x4x512 forward"] = 1000 * best_seconds(jax.jit(conv), deep, 3)
    out[f"{name} 4x4x512 forward as 9 shifted products"] = 1000 * best_seconds(
        jax.jit(shifted_products_conv), deep, 3)
    for (m, k, n), (a, b) in zip(DTYPE_PRODUCTS, products):
      out[f"{name} product {m}x{k}x{n}"] = 1000 * best_seconds(
          jax.jit(product), (a.astype(dtype), b.astype(dtype)), 3)
  return {"ms": out}


def run_torch_dtype_micro(threads: int) -> dict:
  """`run_dtype_micro` in eager PyTorch (NCHW, channels_last memory format, as oneDNN prefers;
  the shifted products are JAX's alone)."""
  import torch  # pylint: disable=g-import-not-at-top  (only this case)
  torch.set_num_threads(threads)
  rng = np.random.RandomState(0)
  x32 = torch.from_numpy(rng.rand(BATCH, 64, 32, 32).astype(np.float32)).contiguous(
      memory_format=torch.channels_last)
  w32 = torch.from_numpy((rng.rand(64, 64, 3, 3) * 0.01).astype(np.float32))
  deep_x32 = torch.from_numpy(rng.rand(BATCH, 512, 4, 4).astype(np.float32)).contiguous(
      memory_format=torch.channels_last)
  deep_w32 = torch.from_numpy((rng.rand(512, 512, 3, 3) * 0.01).astype(np.float32))
  products = [(torch.from_numpy(rng.rand(m, k).astype(np.float32)),
               torch.from_numpy(rng.rand(k, n).astype(np.float32))) for m, k, n in DTYPE_PRODUCTS]
  out = {}
  for dtype in (torch.float32, torch.bfloat16):
    x, w = x32.to(dtype).requires_grad_(True), w32.to(dtype).requires_grad_(True)
    def forward():
      with torch.no_grad():
        torch.nn.functional.conv2d(x, w, padding=1)
    def grads(which):
      y = torch.nn.functional.conv2d(x, w, padding=1)
      torch.autograd.grad(y.float().sum(), [which])
    deep_x, deep_w = deep_x32.to(dtype), deep_w32.to(dtype)
    def deep_forward():
      with torch.no_grad():
        torch.nn.functional.conv2d(deep_x, deep_w, padding=1)
    cases = [("forward", forward), ("input_grad", lambda: grads(x)),
             ("kernel_grad", lambda: grads(w)), ("4x4x512 forward", deep_forward)]
    for (m, k, n), (a, b) in zip(DTYPE_PRODUCTS, products):
      cases.append((f"product {m}x{k}x{n}", functools.partial(
          torch.matmul, a.to(dtype), b.to(dtype))))
    for name, fn in cases:
      fn()
      times = []
      for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
      out[f"{str(dtype).split('.')[-1]} {name}"] = 1000 * min(times)
  return {"ms": out, "threads": threads, "torch": torch.__version__}


def run_allreduce_micro() -> dict:
  """Synchronised BatchNorm's cost between 2 host devices, in two measurements (best of 5 / 3):
  `us_per_allreduce`, 120 chained `pmean`s of 512 floats (each depending on the last, as the BN
  layers' do) in one pmapped program: an upper bound on one all-reduce's latency, dispatch and
  input transfer included; `barrier_ms`, 8 chained layers of a 3x3 convolution (64 x 32 x 32 x
  64 per device, forward or kernel gradient) each followed by a per-channel mean, taken per
  device or `pmean`ed across both: what the barrier costs when it sits between heavy ops."""

  def chain(x):
    for _ in range(120):
      x = jax.lax.pmean(x, "d") * 1.0001 + 1e-3
    return x
  out = {"us_per_allreduce": 1e6 * best_seconds(jax.pmap(chain, axis_name="d"),
                                                 (jnp.ones((2, 512)),), 5) / 120,
         "barrier_ms": {}}
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2,
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def layers(x, w, sync, kernel_grad):
    for _ in range(8):
      if kernel_grad:
        w = w + 1e-3 * jax.vjp(lambda w_, x=x: conv(x, w_), w)[1](x)[0]
        x = x * 0.999
      else:
        x = jnp.tanh(conv(x, w))
      m = x.mean((0, 1, 2))
      x = x - (jax.lax.pmean(m, "d") if sync else m)
    return x.sum() + w.sum()
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.rand(2, BATCH // 2, 32, 32, 64), jnp.float32)
  w = jnp.asarray(rng.rand(2, 3, 3, 64, 64) * 0.02, jnp.float32)
  for kernel_grad in (False, True):
    for sync in (False, True):
      fn = jax.pmap(lambda x, w, s=sync, k=kernel_grad: layers(x, w, s, k), axis_name="d")
      name = (f"{'kernel gradient' if kernel_grad else 'forward'}, "
              f"{'pmean (barrier)' if sync else 'per device'}")
      out["barrier_ms"][name] = 1000 * best_seconds(fn, (x, w), 3)
  return out


def child(case: str, args) -> dict:
  kind, *rest = case.split(":")
  if kind in ("train", "pipeline", "eval"):
    variant = VARIANTS[rest[-1]]
    runtime.configure_cpu_devices(variant["devices"], ynn_fusion_type(variant))
    if "onednn_min_size" in variant:  # this child process only: read when the step is traced
      onednn.MIN_SIZE = variant["onednn_min_size"]
  if kind in ("train", "pipeline"):
    method, model, _ = rest
    blocks, block_steps = block_plan(case, args)
    out = run_train(method, model, variant, args.data, blocks, block_steps, kind == "pipeline")
  elif case == "micro:allreduce":
    runtime.configure_cpu_devices(2, ynn_fusion_type({}))
    out = run_allreduce_micro()
  elif kind == "dtype":  # dtype:<variant>: one convolution in fp32 and bf16 under its XLA flags
    variant = VARIANTS[rest[0]]
    runtime.configure_cpu_devices(1, ynn_fusion_type(variant))
    out = run_dtype_micro()
  elif kind == "torchdtype":
    out = run_torch_dtype_micro(int(rest[0]))
  elif kind == "micro":
    runtime.configure_cpu_devices(1, ynn_fusion_type({}))
    out = run_conv_micro()
  elif is_torch_step(case):
    model, threads, *dtype = rest
    blocks, block_steps = block_plan(case, args)
    out = run_torch(model, int(threads), args.data, blocks, block_steps, *dtype,
                    method=torch_step_of(case))
  else:
    attack, model, _ = rest
    out = run_eval(attack, model, variant, args.data)
  out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  return out


# ----------------------------------------------------------------------------- in the parent


def block_plan(case: str, args) -> tuple[int, int]:
  """(blocks, steps per block) timed after the first step: 6 x 5 for the small CNN, 3 x 1 else."""
  small = ":small_cnn" in case
  return args.blocks or (6 if small else 3), args.block_steps or (5 if small else 1)


def cases(args) -> list[str]:
  suites = args.suites.split(",")
  methods, models = args.methods.split(","), args.models.split(",")
  out = []
  for suite in suites:
    variants = args.variants.split(",") if args.variants else DEFAULT_VARIANTS.get(suite, ())
    for v in variants:
      if v not in VARIANTS:
        sys.exit(f"--variants: unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    if suite == "train":
      out += [f"train:{me}:{mo}:{v}" for mo in models for me in methods for v in variants]
    elif suite == "pipeline":
      out += [f"pipeline:fgsm_pgk:{mo}:{v}" for mo in models for v in variants]
    elif suite in ("torch", "torch-bf16"):  # torch-bf16: the same steps under autocast(bf16)
      steps = [st for st, me in TORCH_STEPS.items() if me in methods]
      out += [torch_case(st, mo, t, "bfloat16" if suite == "torch-bf16" else None)
              for mo in models for st in steps for t in args.torch_threads.split(",")]
    elif suite == "dtype":
      out += [f"dtype:{v}" for v in (variants or ("2dev",))]
      out += [f"torchdtype:{t}" for t in args.torch_threads.split(",")]
    elif suite == "micro":
      out += ["micro:conv", "micro:allreduce"]
    elif suite == "eval":
      out += [f"eval:pgd20:{mo}:{v}" for mo in models for v in variants]
      out += [f"eval:aa-worst:small_cnn:{v}" for v in variants if "small_cnn" in models]
    else:
      sys.exit(f"--suites: unknown suite {suite!r}; use train, pipeline, torch, torch-bf16, "
               "eval, micro, dtype")
  return out


def schedule(case_list: list[str], rounds: int) -> list[tuple[str, int]]:
  """(case, round) in the order to run them: round by round, each train case right after the
  PyTorch steps it is compared with (`ratios`) in even rounds and right before them in odd ones,
  so that the machine's drift (10-20% within an hour here) enters a ratio only through the few
  minutes between its two sides, and not always with the same sign; other cases keep their
  place and run in round 0 only. A PyTorch step compared with several train cases goes with
  the first."""
  refs = {c: [t for t in case_list if is_torch_step(t) and _compared(c, t)]
          for c in case_list if c.startswith("train:")}
  groups, placed = [], set()  # (PyTorch steps, case): one pair, or a case alone
  for case in case_list:
    if case in placed:
      continue
    if case in refs:
      mine = [t for t in refs[case] if t not in placed]
      placed.update(mine)
      groups.append((mine, case))
    elif not (is_torch_step(case) and any(case in r for r in refs.values())):
      groups.append(([], case))
  order = []
  for r in range(rounds):
    for torch_steps, case in groups:
      if r and not (torch_steps or case in refs or is_torch_step(case)):
        continue  # repeated: the cases with a rate that a ratio compares
      pair = torch_steps + [case] if r % 2 == 0 else [case] + torch_steps
      order += [(c, r) for c in pair]
  return order


def _compared(train_case: str, torch_case_name: str) -> bool:
  """Whether `ratios` compares a train case with a PyTorch step's case: the same model, a step of
  the train case's method, fp32 with fp32 and bf16 with autocast bf16."""
  _, method, model, variant = train_case.split(":")
  dtype = VARIANTS.get(variant, {}).get("dtype", "float32")
  parts = torch_case_name.split(":")
  return (TORCH_STEPS.get(torch_step_of(torch_case_name)) == method and parts[1] == model
          and (parts[3] if len(parts) > 3 else "float32") == dtype)


def merge_round(old: dict | None, new: dict, r: int) -> dict:
  """A case's record after its round `r`: round 0's record as it is; later ones add their rate,
  date and block times to `rounds_*` and make `images_per_s` / `step_s` the median over the
  rounds (the other fields stay round 0's). A later round that failed leaves the rates as they
  were and adds its error to `rounds_errors`."""
  if "error" in new and r and old and "error" not in old:
    return dict(old, rounds_errors=old.get("rounds_errors", []) + [
        f"round {r + 1}: {new['error'][-300:]}"])
  if "images_per_s" not in new:  # failed, or a micro case
    return new
  if r == 0 or old is None or "error" in old:
    return dict(new, rounds_images_per_s=[new["images_per_s"]])
  rates = old.get("rounds_images_per_s", [old["images_per_s"]]) + [new["images_per_s"]]
  median = float(np.median(rates))
  return dict(old, rounds_images_per_s=rates, images_per_s=median, step_s=BATCH / median,
              rounds_dates=old.get("rounds_dates", [old.get("date")]) + [new.get("date")],
              rounds_block_s=old.get("rounds_block_s", [old.get("block_s")]) + [new.get("block_s")])


def run_child(command: list[str], xla: str) -> dict:
  """Runs `command`, a child process that prints `RESULT <json>`, with `xla` added to XLA_FLAGS;
  returns that result, or `{"error": its last output}`, with `wall_s`."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS", ""), xla]))
  start = time.time()
  proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    return {"error": (proc.stderr or proc.stdout)[-2000:], "wall_s": time.time() - start}
  return {**json.loads(lines[-1][len("RESULT "):]), "wall_s": time.time() - start}


def run_case(case: str, args) -> dict:
  variant = VARIANTS.get(case.split(":")[-1], {})
  command = [sys.executable, os.path.abspath(__file__), f"--case={case}", f"--data={args.data}",
             f"--blocks={args.blocks}", f"--block_steps={args.block_steps}"]
  result = run_child(command, variant.get("xla", ""))
  if "error" not in result:
    result.update(xla_flags=variant.get("xla", ""), ynn_fusion_type=ynn_in_effect(variant),
                  date=time.strftime("%Y-%m-%d %H:%M"), cpu_flags=cpu_flags())
  return result


def convolutions_ran(variant: str, record: dict) -> str:
  """What ran a train record's convolutions on CPU: the record says so since the default became
  "auto" (2026-11-28); older ones ran their variant's `convolutions`, else XLA's."""
  return record.get("convolutions", VARIANTS.get(variant, {}).get("convolutions", "xla"))


def cpu_flags() -> list[str]:
  """Which of CPU_FLAGS this machine's CPU has (`runtime.cpu_flags`)."""
  flags = runtime.cpu_flags()
  return [f for f in CPU_FLAGS if f in flags]


def ynn_fusion_type(variant: dict) -> str:
  """`config.cpu_ynn_fusion_type` for a case: its `ynn`, else the config's default."""
  return variant.get("ynn", config_lib.base_config().cpu_ynn_fusion_type)


def ynn_in_effect(variant: dict) -> str:
  """The YNNPACK fusion kinds XLA ran a case with, for the record: its XLA_FLAGS' if they set
  them (they win), else `ynn_fusion_type`; "XLA default" where XLA chose, "none" if empty."""
  flag = re.search(runtime.YNN_FLAG + r"=(\S*)", variant.get("xla", ""))
  value = flag.group(1) if flag else ynn_fusion_type(variant)
  return {"default": "XLA default", "": "none"}.get(value, value)


def machine() -> str:
  cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
              if l.startswith("model name")), platform.processor())
  return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, CPU flags: "
          f"{', '.join(cpu_flags()) or 'none of ' + ', '.join(CPU_FLAGS)}")


def _f(v, digits=1):
  return "-" if v is None else f"{v:.{digits}f}"


def _order(key: str):
  """Table order: by model, then method, then the default variant first."""
  parts = key.split(":")
  model = parts[2] if len(parts) > 3 else ""
  return (MODELS.index(model) if model in MODELS else 9,
          METHODS.index(parts[1]) if parts[1] in METHODS else 9, parts[-1] != "2dev", parts[-1])


def _table(title: str, header, rows) -> list[str]:
  return ["", f"## {title}", "", "| " + " | ".join(header) + " |",
          "|" + " --- |" * len(header)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def torch_references(ok: dict) -> dict:
  """(PyTorch step, model, dtype) -> its case with the most threads (the machine's whole CPU);
  bfloat16 is PyTorch's autocast."""
  return {(torch_step_of(k), k.split(":")[1], v.get("dtype", "float32")): v
          for k, v in sorted(ok.items(), key=lambda kv: kv[1].get("threads", 0))
          if is_torch_step(k)}


def ratios(results: dict) -> list[str]:
  """One line per train case and PyTorch step of its method and dtype: the ratios the issue's
  targets are about, fp32 against fp32 and bf16 against autocast bf16. With rounds
  (`--rounds`), the ratio of the medians, then each round's (its two sides run one after the
  other, `schedule`)."""
  ok = {k: v for k, v in results.items() if not k.startswith("_") and "error" not in v}
  torch = torch_references(ok)
  out = []
  for key, r in sorted(ok.items(), key=lambda kv: _order(kv[0])):
    parts = key.split(":")
    if parts[0] != "train":
      continue
    dtype = VARIANTS.get(parts[3], {}).get("dtype", "float32")
    for step in (st for st, me in TORCH_STEPS.items() if me == parts[1]):
      ref = torch.get((step, parts[2], dtype))
      if ref:
        out.append(f"{parts[1]} {parts[2]} {parts[3]} ({dtype}, {convolutions_ran(parts[3], r)} "
                   f"convolutions): {r['images_per_s']:.1f} img/s, "
                   f"PyTorch {step} {'autocast ' if dtype == 'bfloat16' else ''}{dtype} "
                   f"{ref['images_per_s']:.1f} -> {r['images_per_s'] / ref['images_per_s']:.2f}x"
                   + _round_ratios(r, ref))
  return out


def _round_ratios(r: dict, ref: dict) -> str:
  ours, theirs = r.get("rounds_images_per_s", []), ref.get("rounds_images_per_s", [])
  if len(ours) < 2 or len(ours) != len(theirs):
    return ""
  return " (rounds: " + ", ".join(f"{a / b:.2f}x" for a, b in zip(ours, theirs)) + ")"


def write_markdown(results: dict, path: str) -> None:
  """The results as tables; the hand-written reading (`<path stem>.notes.md`, if present) first."""
  lines = ["# Benchmark: regmix_jax on CPU", "",
           f"Machine: {results.get('_machine', '?')}. Written by `experiments/benchmark.py` from "
           f"`{os.path.basename(path).replace('.md', '.json')}`; batch {BATCH}, real CIFAR-10 "
           "images (the subset's first shuffled batch); each case in its own process.", ""]
  notes = path.replace(".md", ".notes.md")
  if os.path.exists(notes):
    with open(notes) as f:
      lines += [f.read().rstrip(), ""]
  ok = {k: v for k, v in results.items() if not k.startswith("_") and "error" not in v}
  torch = torch_references(ok)
  lines += ["## Ratios (ours / PyTorch; img/s are medians over rounds)", ""]
  lines += [f"- {line}" for line in ratios(results)]

  train_rows = []
  for key, r in sorted(ok.items(), key=lambda kv: _order(kv[0])):
    if not key.startswith("train:"):
      continue
    _, method, model, variant = key.split(":")
    dtype = VARIANTS.get(variant, {}).get("dtype", "float32")
    ref = torch.get((method, model, dtype))  # TRADES: the released step
    train_rows.append((
        method, model, variant, dtype,
        r.get("ynn_fusion_type", ynn_in_effect({"xla": r.get("xla_flags", ""), "ynn": "default"})),
        convolutions_ran(variant, r), _f(r["images_per_s"]), _f(r["step_s"], 3),
        _f(r["first_step_s"]), _f(r["compile_s"]),
        f"{r['later_compiles']} / {r['later_traces']}", _f(r["peak_rss_gib"], 2),
        _f(ref and ref["images_per_s"]), _f(ref and r["images_per_s"] / ref["images_per_s"], 2)))
  lines += _table("Train step (batch on the devices)",
                  ("method", "model", "variant", "dtype", "YNNPACK fusions", "convolutions",
                   "img/s", "step s",
                   "first step s", "compile s",
                   "compiles / traces in steps 2..N", "peak RSS GiB",
                   "torch img/s (same dtype; bf16: autocast)", "JAX / torch"), train_rows)
  pipeline = [(k.split(":")[2], k.split(":")[3], r) for k, r in ok.items()
              if k.startswith("pipeline:")]
  lines += _table("Input pipeline: real loader vs a device-resident batch (FGSM-PGK; "
                  "alternating blocks in one process)",
                  ("model", "variant", "resident img/s", "pipeline img/s", "pipeline / resident"),
                  [(m, v, _f(r["images_per_s"]), _f(r["pipeline_images_per_s"]),
                    _f(r["pipeline_ratio"], 3)) for m, v, r in pipeline])
  lines += _table("PyTorch eager steps (`experiments/torch_reference.py`)",
                  ("step", "model", "threads", "dtype", "img/s", "step s", "first step s",
                   "peak RSS GiB"),
                  [(torch_step_of(k), k.split(":")[1], r["threads"], r.get("dtype", "float32"),
                    _f(r["images_per_s"]), _f(r["step_s"], 3),
                    _f(r["first_step_s"]), _f(r["peak_rss_gib"], 2))
                   for k, r in ok.items() if is_torch_step(k)])
  precision = [(k, r) for k, r in sorted(ok.items())
               if k.startswith("dtype:") or k.startswith("torchdtype:")]
  if precision:
    names = sorted({n for _, r in precision for n in r["ms"]})
    lines += _table("Convolutions and matrix products, float32 and bfloat16 (ms, best of 3; "
                    "`--suites=dtype`, `run_dtype_micro`)",
                    ("operation", *(k.replace("torchdtype:", "PyTorch, threads ")
                                    .replace("dtype:", "JAX ") for k, _ in precision)),
                    [(n, *(_f(r["ms"].get(n)) for _, r in precision)) for n in names])
  lines += _table("Evaluation", ("attack", "model", "variant", "img/s", "examples (batches)",
                                  "compiles", "compile s", "peak RSS GiB"),
                  [(*k.split(":")[1:], _f(r["images_per_s"], 2),
                    f"{r['examples']} ({r['batches']})", r["compiles"], _f(r["compile_s"]),
                    _f(r["peak_rss_gib"], 2)) for k, r in ok.items() if k.startswith("eval:")])
  micro = ok.get("micro:conv")
  if micro:
    lines += _table("One convolution on one device (ms, best of 3; `--suites=micro`)",
                    ("convolution, batch 128", "ms"),
                    [(name, _f(ms)) for name, ms in micro["ms"].items()])
  allreduce = ok.get("micro:allreduce")
  if allreduce:
    lines += ["", f"One in-process all-reduce of 512 floats between 2 host devices (chained, as "
              f"synchronised BatchNorm's are): {allreduce['us_per_allreduce']:.0f} µs."]
    lines += _table("8 chained 3x3 convolution layers on 2 host devices (64 x 32 x 32 x 64 each), "
                    "a per-channel mean after each: per device or all-reduced (ms, best of 3)",
                    ("layers, mean", "ms"),
                    [(k, _f(v)) for k, v in allreduce.get("barrier_ms", {}).items()])
  failed = {k: v for k, v in results.items() if not k.startswith("_") and "error" in v}
  if failed:
    lines += ["", "## Failed cases", ""]
    lines += [f"- `{k}`: {v['error'].strip().splitlines()[-1][:300]}" for k, v in failed.items()]
  variants = sorted({k.split(":")[-1] for k in ok if not is_torch_step(k)})
  lines += ["", "Variants: " + "; ".join(
      f"`{v}` = {RETIRED_VARIANTS[v]} (retired)" if v in RETIRED_VARIANTS else
      f"`{v}` = {VARIANTS[v]['devices']} CPU device(s), {VARIANTS[v].get('parallel', 'pmap')}, "
      f"{VARIANTS[v].get('dtype', 'float32')}"
      + (", BatchNorm statistics per device" if VARIANTS[v].get("local_bn") else "")
      + (f", convolutions {VARIANTS[v]['convolutions']}" if VARIANTS[v].get("convolutions") else "")
      + (f", XLA_FLAGS `{VARIANTS[v]['xla']}`" if VARIANTS[v].get("xla") else "")
      for v in variants if v in VARIANTS or v in RETIRED_VARIANTS) + "."]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv=None):
  args = parse_args(argv)
  require_data(args.data)
  if args.case:
    print("RESULT " + json.dumps(child(args.case, args)), flush=True)
    return
  results = {}
  if os.path.exists(args.results):
    with open(args.results) as f:
      results = json.load(f)
  results.setdefault("_machine", machine())
  if args.rounds > 1 and args.rounds % 2:
    print(f"note: --rounds={args.rounds} is odd: PyTorch goes first in one round more than ours, "
          "and the side that runs first tends to be faster; an even count weighs both alike",
          flush=True)
  for case, r in schedule(cases(args), args.rounds):
    done = results.get(case, {"error": ""})
    if "error" not in done and len(done.get("rounds_images_per_s", [0])) > r and (
        r or not args.force):
      continue
    print(f"running {case} (round {r + 1} of {args.rounds}) ...", flush=True)
    results[case] = merge_round(results.get(case), run_case(case, args), r)
    shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in results[case].items()}
    print(f"  {shown}", flush=True)
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
      json.dump(results, f, indent=1, sort_keys=True)
  write_markdown(results, args.markdown)
  print(f"Machine: {results['_machine']}")
  print("\n".join(ratios(results)))


if __name__ == "__main__":
  main()
