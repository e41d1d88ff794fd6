"""Where one train step's time goes on CPU: XLA:CPU's thunk trace, summed by kind per device.

  python experiments/benchmarks/profile_step.py --method=fgsm_pgk --model=resnet18 --variant=2dev

Builds the case as `benchmark.py` does (batch 128 on the subset, a `harness.VARIANTS` entry, its
convolutions `harness.convolutions`),
runs two steps, then traces a third with `jax.profiler` (XLA_FLAGS gains
`--xla_cpu_enable_xprof_traceme=true`). Each compiled thunk is put in one kind, read from the
optimised HLO: kernel-gradient convolution (output shaped like a kernel), other convolution,
oneDNN's forward / input-gradient / kernel-gradient convolution (its FFI calls), collective
(all-reduce, waiting for the other devices included), transpose/copy, other fusion.
Prints, for every thread that ran thunks for over 0.1 s, its seconds per kind, then the
milliseconds per kind and output shape (per device, 20 ms and more). Thunks nested in others
are counted once. XLA's own (Eigen) convolutions mostly run outside traced thunks: with them
(the library's default, `config.cpu_ynn_fusion_type="reduce"`) the time "not in a traced thunk"
is mostly convolutions. The trace adds a few percent to the step; use `benchmark.py` for rates.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

import jax

from regmix_jax import train

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the modules beside this one; experiments/common.py
# pylint: disable=g-import-not-at-top,wrong-import-position
import harness
import suites_train
from common import DEFAULT_DATA
# pylint: enable=g-import-not-at-top,wrong-import-position

SKIP = ("ThreadpoolListener", "end:", "CommonPjRt", "Handle", "Allocate", "ThunkExecutor",
        "Rendezvous", "Wait")


def kinds_from_hlo(hlo: str) -> dict[str, tuple[str, str]]:
  """Fusion name -> (kind, output shape) from optimised HLO text."""
  bodies = {m.group(1): m.group(0) for m in re.finditer(r"\n%([\w.\-]+) \(.*?\n\}", hlo, re.S)}
  out = {}
  for m in re.finditer(r"%([\w.\-]+) = (\S+) fusion\(.*?calls=%([\w.\-]+)", hlo):
    name, shape, body = m.group(1), m.group(2).split("{")[0], bodies.get(m.group(3), "")
    conv = re.search(r"convolution\(.*?dim_labels=(\S+?)[,\s]", body)
    if conv:
      kernel_like = re.match(r"f32\[\d+,[13],[13],\d+\]$", shape)
      kind = "conv kernel-grad" if conv.group(1).startswith("b01f_01io") and kernel_like \
          else "conv forward/input-grad"
    elif "transpose" in name or "copy" in name:
      kind = "transpose/copy"
    else:
      kind = "other fusion"
    out[name] = (kind, shape)
  # oneDNN's convolutions (`regmix_jax.cpu.onednn`): FFI custom calls whose `kind` attribute says
  # forward (0), input gradient (1) or kernel gradient (2); and the kernels packed for them.
  for m in re.finditer(r"%([\w.\-]+) = (\S+) custom-call\([^\n]*?custom_call_target="
                       r"\"regmix_onednn_(conv|pack)\"[^\n]*?backend_config=\{[^}]*?\bkind = "
                       r"(\d)", hlo):
    shape = m.group(2).split("{")[0]
    out[m.group(1)] = ("oneDNN kernel pack" if m.group(3) == "pack" else (
        "oneDNN conv forward", "oneDNN conv input-grad",
        "oneDNN conv kernel-grad")[int(m.group(4))], shape)
  return out


def kind_of(name: str, fusions: dict) -> str:
  if name in fusions:
    return fusions[name][0]
  base = name.split(".")[0]
  if base.startswith("convolution"):
    return "conv forward/input-grad"  # not fused: XLA's Eigen convolution thunk
  if base in ("psum", "all-reduce", "pmean"):
    return "collective (incl. waiting)"
  return "other"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--method", default="fgsm_pgk")
  p.add_argument("--model", default="resnet18")
  p.add_argument("--variant", default="2dev")
  p.add_argument("--data", default=DEFAULT_DATA)
  args = p.parse_args(argv)
  variant = harness.VARIANTS[args.variant]
  os.environ["XLA_FLAGS"] = " ".join(filter(None, [
      os.environ.get("XLA_FLAGS", ""), variant.get("xla", ""),
      "--xla_cpu_enable_xprof_traceme=true"]))
  harness.configure_devices(variant)
  config = harness.load_config(args.method, args.model, variant, args.data)
  trainer = train.build_trainer(config, harness.convolutions(config, variant))
  stepper = suites_train.Stepper(trainer, pipeline=False)
  stepper(2)
  _, batch = next(stepper.batches)
  fusions = kinds_from_hlo(
      trainer.train_step.lower(stepper.device_state, batch).compile().as_text())
  trace_dir = tempfile.mkdtemp(prefix="profile_step_")
  jax.profiler.start_trace(trace_dir)
  seconds = stepper(1)
  jax.profiler.stop_trace()
  print(f"{args.method} {args.model} {args.variant} "
        f"(YNNPACK fusions: {harness.ynn_in_effect(variant)}; {trainer.convolutions.name} "
        f"convolutions): traced step {seconds:.2f} s")
  data = jax.profiler.ProfileData.from_file(
      glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[-1])
  per_shape = collections.defaultdict(lambda: [0.0, 0])
  for plane in data.planes:
    if plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      if line.name == "python":
        continue
      totals, end = collections.Counter(), 0
      for event in sorted(line.events, key=lambda e: e.start_ns):
        if event.name.startswith(SKIP) or event.start_ns < end:
          continue
        end = event.start_ns + event.duration_ns
        kind = kind_of(event.name, fusions)
        totals[kind] += event.duration_ns / 1e9
        if event.name in fusions:
          entry = per_shape[(kind, fusions[event.name][1])]
          entry[0] += event.duration_ns / 1e6
          entry[1] += 1
      if sum(totals.values()) > 0.1:
        print(f"  thread {line.name[:28]:28s} busy {sum(totals.values()):6.2f} s, not in a "
              f"traced thunk {seconds - sum(totals.values()):5.2f} s: " +
              ", ".join(f"{k} {v:.2f}" for k, v in totals.most_common()))
  devices = variant["devices"]
  print("per output shape, per device (ms in all, count, ms each):")
  for (kind, shape), (ms, n) in sorted(per_shape.items(), key=lambda kv: -kv[1][0]):
    if ms / devices >= 20:
      print(f"  {kind:24s} {shape:22s} {ms / devices:7.0f} {n // devices:3d} "
            f"{ms / max(n, 1):6.0f}")


if __name__ == "__main__":
  main()
