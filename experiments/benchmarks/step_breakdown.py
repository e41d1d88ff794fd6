"""Where a train step's time goes, ours and PyTorch's: the step timed whole and with parts of its
convolution work replaced by cheap stand-ins of the same shapes, each case in its own process.

  python experiments/benchmarks/step_breakdown.py --data=../shared/data/cifar10_subset.npz
  python experiments/benchmarks/step_breakdown.py --method=fgsm_pgk --model=resnet18 --repeats=2

Cases (`suites_train.run_train` / `suites_train.run_torch`, batch 128, the `--variant` of ours):
  jax:full             the step as the library runs it with XLA's convolutions
                       (`fast_conv.FastConv` without oneDNN)
  jax:no_convs         every convolution replaced by a stand-in, given to the models as their
                       convolution (`StandInConvolutions`): the input taken at the stride, tiled
                       to the output's channels, times the kernel's sum (elementwise work of the
                       output's size; its gradients are elementwise too)
  jax:no_kernel_grads  convolutions' kernel gradients replaced (`fast_conv._kernel_tangent` gives
                       the sum of the kernel tangent, broadcast; its transpose is a broadcast)
  jax:no_input_grads   convolutions' input gradients replaced likewise (`fast_conv._input_tangent`)
  torch:full           the PyTorch eager step (`torch_reference`), --torch_threads threads
  torch:no_convs       every `nn.Conv2d` replaced by the same stand-in
Then: convolutions = full - no_convs; kernel gradients = full - no_kernel_grads; input gradients
= full - no_input_grads; forward convolutions = the rest. The stand-ins keep every other op (the
step's values change, its work elsewhere does not), so the differences are what the replaced
work costs inside the step, where it shares caches and cores with the rest. The gradient
stand-ins replace `fast_conv`'s rules, so the variant's convolutions must resolve to XLA's
(`cpu.choose` gives "xla"; oneDNN's have rules of their own): the default `2dev-xla` does. The
cases run in rounds (one of each case per round, `--repeats` rounds); each figure is the median
over rounds of a case's median block. This is a diagnostic that replaces library internals in
its child processes only; `benchmark.py` gives the rates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from regmix_jax import cpu
from regmix_jax.cpu import fast_conv

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the modules beside this one; experiments/common.py
# pylint: disable=g-import-not-at-top,wrong-import-position
import harness
import suites_train
from common import DEFAULT_DATA, require_data
# pylint: enable=g-import-not-at-top,wrong-import-position

CASES = ("jax:full", "jax:no_convs", "jax:no_kernel_grads", "jax:no_input_grads", "torch:full",
         "torch:no_convs")


def _stand_in(x, out_channels: int, stride: int, kernel_sum, channel_axis: int, tile):
  """The input at the stride, tiled to `out_channels` channels (`tile(array, repeats)`), times the
  kernel's sum per output channel: a convolution's output shape (padding kernel // 2) at
  elementwise cost. For JAX and PyTorch arrays alike."""
  spatial = [d for d in range(1, x.ndim) if d != channel_axis]
  index = [slice(None)] * x.ndim
  for d in spatial:
    index[d] = slice(None, None, stride)
  taken = x[tuple(index)]
  repeats = [1] * x.ndim
  repeats[channel_axis] = -(-out_channels // x.shape[channel_axis])
  tiled = tile(taken, repeats)
  index = [slice(None)] * x.ndim
  index[channel_axis] = slice(0, out_channels)
  return tiled[tuple(index)] * kernel_sum


def _jax_conv_stand_in(lhs, rhs, window_strides, padding, *args, **kwargs):
  del padding, args, kwargs  # the models' convolutions: NHWC / HWIO, padding kernel // 2
  return _stand_in(lhs, rhs.shape[-1], window_strides[0], rhs.sum(axis=(0, 1, 2)), 3,
                   jnp.tile)


@dataclasses.dataclass(frozen=True)
class StandInConvolutions(cpu.Convolutions):
  """`cpu.Convolutions` whose `conv`, the models' convolution (`train.build_trainer`), is
  `stand_in`."""

  stand_in: Callable | None = None

  @property
  def conv(self) -> Callable | None:
    return self.stand_in


def _output_shape(lhs, rhs, params):
  return jax.eval_shape(lambda: lax.conv_general_dilated_p.bind(lhs, rhs, **params))


def _kernel_tangent_stand_in(lhs, d_rhs, params):
  """For `fast_conv._kernel_tangent`: the kernel tangent's sum, broadcast to the output."""
  out = _output_shape(lhs, d_rhs, params)
  return jnp.broadcast_to(jnp.sum(d_rhs), out.shape).astype(out.dtype)


def _input_tangent_stand_in(d_lhs, rhs, params):
  """For `fast_conv._input_tangent`: the input tangent's sum, broadcast to the output."""
  out = _output_shape(d_lhs, rhs, params)
  return jnp.broadcast_to(jnp.sum(d_lhs), out.shape).astype(out.dtype)


# The gradient cases: the `fast_conv` tangent rule each replaces, and its stand-in.
TANGENT_STAND_INS = {"no_kernel_grads": ("_kernel_tangent", _kernel_tangent_stand_in),
                     "no_input_grads": ("_input_tangent", _input_tangent_stand_in)}


def child(case: str, args) -> dict:
  side, part = case.split(":")
  if side == "torch":
    # torch is no dependency of the library: imported only by the cases that run it.
    import torch  # pylint: disable=g-import-not-at-top
    if part == "no_convs":
      torch.nn.Conv2d.forward = lambda self, x: _stand_in(
          x, self.out_channels, self.stride[0], self.weight.sum(dim=(1, 2, 3))[:, None, None], 1,
          lambda t, repeats: t.repeat(*repeats))
    return suites_train.run_torch(args.model, args.torch_threads, args.data, args.blocks,
                                  args.block_steps, method=args.method)
  variant = harness.VARIANTS[args.variant]
  harness.configure_devices(variant)
  convolutions = harness.convolutions(
      harness.load_config(args.method, args.model, variant, args.data), variant)
  if convolutions.name != "xla":
    raise SystemExit(f"--variant={args.variant}: {convolutions.describe()} The stand-ins "
                     "replace XLA's convolutions' rules (`fast_conv`): take a variant whose "
                     "convolutions are XLA's, e.g. 2dev-xla.")
  if part == "no_convs":
    convolutions = StandInConvolutions(convolutions.name, "every convolution a stand-in",
                                       stand_in=_jax_conv_stand_in)
  elif part in TANGENT_STAND_INS:  # this child process only; read when the step is traced
    setattr(fast_conv, *TANGENT_STAND_INS[part])
  return suites_train.run_train(args.method, args.model, variant, args.data, args.blocks,
                                args.block_steps, pipeline=False, convolutions=convolutions)


def run_case(case: str, args) -> float:
  """The case's step seconds (its median block), from a child process."""
  command = [sys.executable, os.path.abspath(__file__), f"--case={case}", f"--data={args.data}",
             f"--method={args.method}", f"--model={args.model}", f"--variant={args.variant}",
             f"--blocks={args.blocks}", f"--block_steps={args.block_steps}",
             f"--torch_threads={args.torch_threads}"]
  result = harness.run_child(command, harness.VARIANTS[args.variant].get("xla", ""))
  if "error" in result:
    raise RuntimeError(f"case {case} failed:\n{result['error']}")
  return result["step_s"]


def breakdown(step_s: dict[str, float]) -> list[tuple[str, float | None, float | None]]:
  """(row, ours s, PyTorch s) from each case's step seconds."""
  full, torch_full = step_s["jax:full"], step_s["torch:full"]
  convs, torch_convs = full - step_s["jax:no_convs"], torch_full - step_s["torch:no_convs"]
  kernel = full - step_s["jax:no_kernel_grads"]
  inputs = full - step_s["jax:no_input_grads"]
  return [("whole step", full, torch_full),
          ("without convolutions (stand-ins)", step_s["jax:no_convs"], step_s["torch:no_convs"]),
          ("convolutions (difference)", convs, torch_convs),
          ("  of which kernel gradients", kernel, None),
          ("  of which input gradients", inputs, None),
          ("  of which forward passes (the rest)", convs - kernel - inputs, None)]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", default=DEFAULT_DATA)
  p.add_argument("--method", default="fgsm_pgk")
  p.add_argument("--model", default="resnet18")
  p.add_argument("--variant", default="2dev-xla",
                 help="a harness.VARIANTS name, for ours (its convolutions XLA's)")
  p.add_argument("--torch_threads", type=int, default=2)
  p.add_argument("--blocks", type=int, default=3)
  p.add_argument("--block_steps", type=int, default=2)
  p.add_argument("--repeats", type=int, default=2, help="rounds of every case")
  p.add_argument("--results", default=os.path.join(harness.RESULTS, "step_breakdown_cpu.json"))
  p.add_argument("--case", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  require_data(args.data)
  if args.case:
    print("RESULT " + json.dumps(child(args.case, args)))
    return
  runs = {case: [] for case in CASES}
  for _ in range(args.repeats):
    for case in CASES:
      runs[case].append(run_case(case, args))
      print(f"{case:22s} {runs[case][-1]:.3f} s/step", flush=True)
  step_s = {case: statistics.median(v) for case, v in runs.items()}
  rows = breakdown(step_s)
  command = ["python", "experiments/benchmarks/step_breakdown.py"] + sys.argv[1:]
  record = {"command": " ".join(command),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": harness.machine(),
            "cpu_flags": harness.cpu_flags(), "method": args.method, "model": args.model,
            "variant": args.variant, "torch_threads": args.torch_threads, "runs_s": runs,
            "step_s": step_s, "rows": rows}
  with open(args.results, "w") as f:
    json.dump(record, f, indent=1)
  lines = [f"# Step breakdown: {args.method} {args.model}, batch 128", "",
           f"{record['date']}, {record['machine']}; ours `{args.variant}`, PyTorch "
           f"{args.torch_threads} threads. Written by `{record['command']}` (see its docstring).",
           "", "| seconds per step | ours | PyTorch |", "| --- | --- | --- |"]
  fmt = lambda v: "-" if v is None else f"{v:.2f}"
  lines += [f"| {row} | {fmt(ours)} | {fmt(theirs)} |" for row, ours, theirs in rows]
  with open(os.path.splitext(args.results)[0] + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
