"""What the benchmark suites and their command line (`benchmark.py`) share: the variants a case
runs under, the configs it trains, its convolutions, how it runs in a child process and is timed,
the names of the PyTorch steps' cases, and the machine's line."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import subprocess
import time

import jax

from regmix_jax import config as config_lib, cpu
from regmix_jax.cpu import host, onednn

HERE = os.path.dirname(os.path.abspath(__file__))
EXPERIMENTS = os.path.dirname(HERE)
ROOT = os.path.dirname(EXPERIMENTS)
RESULTS = os.path.join(EXPERIMENTS, "results")

METHODS = ("fgsm_pgk", "fgsm_agr", "d2r", "trades", "pgd_at")
MODELS = ("small_cnn", "resnet18", "preact_resnet18")
BATCH = 128
YNN_ALL = f"{host.YNN_FLAG}={','.join(host.YNN_FUSION_TYPES)}"
NO_YNN = f"{host.YNN_FLAG}="
# name -> devices (host CPU devices), parallel ("pmap" | "shard_map"), dtype, xla (XLA_FLAGS),
# ynn (`config.cpu_ynn_fusion_type`; the config's default when absent), convolutions
# (`config.cpu_convolutions`; the config's default, "auto", when absent) and onednn_min_size (the
# narrowest input map sent to oneDNN, `cpu.Convolutions.onednn_min_size`; see `convolutions`).
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
    # Convolutions on oneDNN through an FFI call (`config.cpu_convolutions="onednn"`,
    # 2026-11-28; needs `pip install ".[onednn]"`): input maps at least the CPU's default wide
    # (`onednn.default_min_size`: 16 until 2026-12-07 everywhere, since then 1 on AMD CPUs with
    # AVX-512; records name it as `onednn_min_size` since then).
    "2dev-dnnl": dict(devices=2, convolutions="onednn"),
    "1dev-dnnl": dict(devices=1, convolutions="onednn"),
    "2dev-bf16-dnnl": dict(devices=2, dtype="bfloat16", convolutions="onednn"),
    # XLA's own convolutions whatever the config's default (since 2026-11-28 "auto": oneDNN's on
    # x86-64 CPUs with AVX-512 where installed). The variants without `convolutions` run the
    # config's default; each record says what ran (`convolutions`), and records without it ran
    # XLA's (they predate the field).
    "2dev-xla": dict(devices=2, convolutions="xla"),
    # oneDNN for input maps >= 16 / 8 wide whatever the CPU's default
    # (`cpu.Convolutions.onednn_min_size`): ResNet's third stage too with 8.
    "2dev-dnnl16": dict(devices=2, convolutions="onednn", onednn_min_size=16),
    "2dev-dnnl8": dict(devices=2, convolutions="onednn", onednn_min_size=8),
    # Every convolution on oneDNN, the 8 x 8 and 4 x 4 maps too (2026-12-07, AMD EPYC).
    "2dev-dnnl1": dict(devices=2, convolutions="onednn", onednn_min_size=1),
    "1dev-xla": dict(devices=1, convolutions="xla"),
    "2dev-bf16-xla": dict(devices=2, dtype="bfloat16", convolutions="xla"),
}
# Attempts recorded in results/benchmark_cpu.json whose code is no longer here (not kept): kernel
# gradients as patch GEMMs (`*-gemmgrad`) or, for 3x3 stride-1 convolutions on maps of 16x16 and
# more, as 9 shifted dots (`*-tapsgrad`), both swapped into the models' convolutions; their code
# is `custom_kernel_grad_conv` / `_use_custom_kernel_grad` in experiments/benchmark.py at commit
# 710c77f.
RETIRED_VARIANTS = {
    "1dev-gemmgrad": "1 CPU device(s), pmap, float32, kernel gradients as patch GEMMs",
    "2dev-gemmgrad": "2 CPU device(s), pmap, float32, kernel gradients as patch GEMMs",
    "1dev-tapsgrad": "1 CPU device(s), pmap, float32, 3x3 stride-1 kernel gradients as 9 shifted dots",
    "2dev-tapsgrad": "2 CPU device(s), pmap, float32, 3x3 stride-1 kernel gradients as 9 shifted dots",
}
# The CPU features that decide how bf16 can run: AVX512-BF16 (bf16 dot products in vector
# registers) and AMX (bf16 matrix tiles).
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration",
                  "/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration")


# ------------------------------------------------------------------------------ a case's set-up


def ynn_fusion_type(variant: dict) -> str:
  """`config.cpu_ynn_fusion_type` for a case: its `ynn`, else the config's default."""
  return variant.get("ynn", config_lib.base_config().cpu_ynn_fusion_type)


def ynn_in_effect(variant: dict) -> str:
  """The YNNPACK fusion kinds XLA ran a case with, for the record: its XLA_FLAGS' if they set
  them (they win), else `ynn_fusion_type`; "XLA default" where XLA chose, "none" if empty."""
  flag = re.search(host.YNN_FLAG + r"=(\S*)", variant.get("xla", ""))
  value = flag.group(1) if flag else ynn_fusion_type(variant)
  return {"default": "XLA default", "": "none"}.get(value, value)


def configure_devices(variant: dict) -> None:
  """In a case's child process, before JAX starts a backend: the variant's host CPU devices
  (default 1) and YNNPACK fusions (`host.configure_cpu_devices`)."""
  host.configure_cpu_devices(variant.get("devices", 1), ynn_fusion_type(variant))


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


def onednn_min_size(convolutions: cpu.Convolutions) -> int | None:
  """The narrowest input map a case sent to oneDNN (resolved), or None when oneDNN ran none."""
  if convolutions.name != "onednn":
    return None
  return onednn.resolve_min_size(convolutions.onednn_min_size)


def convolutions(config, variant: dict) -> cpu.Convolutions:
  """What runs a case's convolutions, for `train.build_trainer`: `cpu.convolutions_for` the
  config's `cpu_convolutions` (the variant's, else the default), with the variant's
  `onednn_min_size` where it has one. Call it after `configure_devices`."""
  chosen = cpu.convolutions_for(config)
  if "onednn_min_size" in variant:
    chosen = dataclasses.replace(chosen, onednn_min_size=variant["onednn_min_size"])
  return chosen


def block_plan(case: str, args) -> tuple[int, int]:
  """(blocks, steps per block) timed after the first step: 6 x 5 for the small CNN, 3 x 1 else;
  `--blocks` / `--block_steps` where given."""
  small = ":small_cnn" in case
  return args.blocks or (6 if small else 3), args.block_steps or (5 if small else 1)


# ------------------------------------------------------------------------------------- timing


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


def best_seconds(fn, args, repeats: int) -> float:
  """The fastest of `repeats` calls of `fn(*args)`, after one call that compiles."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


# ------------------------------------------------------------------------- PyTorch steps' cases


# PyTorch eager steps (`torch_reference`) -> the regmix_jax method each is the reference of.
TORCH_STEPS = {"fgsm_pgk": "fgsm_pgk", "pgd_at": "pgd_at", "pgd_at_same_work": "pgd_at",
               "trades": "trades", "trades_same_work": "trades"}


def torch_case(method: str, model: str, threads: str, dtype: str | None = None,
               channels_last: bool = False) -> str:
  """The case name of a PyTorch step: `torch:<model>:<threads>[:bfloat16][:channels_last]` for
  FGSM-PGK (the name its earlier records carry), `torch-<step>:<model>:<threads>[...]` for the
  others."""
  kind = "torch" if method == "fgsm_pgk" else f"torch-{method}"
  return ":".join([kind, model, threads] + ([dtype] if dtype else [])
                  + (["channels_last"] if channels_last else []))


def is_torch_step(case: str) -> bool:
  """Whether a case name is a PyTorch step's (`torch_case`)."""
  return case.startswith(("torch:", "torch-"))


def torch_step_of(case: str) -> str:
  """The `TORCH_STEPS` key of a PyTorch case name (`torch_case`)."""
  kind = case.split(":")[0]
  return "fgsm_pgk" if kind == "torch" else kind[len("torch-"):]


# --------------------------------------------------------------------------- in the parent


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


def cpu_flags() -> list[str]:
  """Which of CPU_FLAGS this machine's CPU has (`host.cpu_flags`)."""
  flags = host.cpu_flags()
  return [f for f in CPU_FLAGS if f in flags]


def machine() -> str:
  """The CPU's model, its cores, the OS and `cpu_flags`: one line for a record."""
  cpu_name = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                   if l.startswith("model name")), platform.processor())
  return (f"{cpu_name}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, CPU "
          f"flags: {', '.join(cpu_flags()) or 'none of ' + ', '.join(CPU_FLAGS)}")
